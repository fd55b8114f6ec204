//! A client of the admin API, and waits on the state it shows.

use std::time::Duration;

use serde_json::Value;

use super::{log_tail, wait::time_until, Edge};

/// The admin token every harness edge gets unless a test sets its own environment.
pub const TOKEN: &str = "t0ken";
pub const TOKEN_ENV: &str = "CUSTOM_PAGES_ADMIN_TOKEN";

pub struct Admin {
    base: String,
    http: reqwest::Client,
}

/// An admin API answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub content_type: Option<String>,
    pub text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub json: Value,
}

/// The hex SHA-256 of a token, as a tokens file names it.
pub fn sha256_hex(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub fn rule_path(domain: &str, code: &str) -> String {
    format!("/api/domains/{domain}/custom-pages/{code}")
}

impl Admin {
    pub fn new(edge: &Edge) -> Admin {
        Admin {
            base: format!("http://127.0.0.1:{}", edge.admin_port),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("admin client"),
        }
    }

    /// One call with any method, authorization and body (JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        self.call_with(method, path, auth, &[], body).await
    }

    /// Like [`call`](Self::call), with extra request headers (`If-Match`, `X-Change-Comment`).
    pub async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (www_authenticate, content_type) = (header("www-authenticate"), header("content-type"));
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"));
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            www_authenticate,
            content_type,
            text,
            json,
        }
    }

    async fn authorized(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> Answer {
        self.call(method, path, Some(&bearer(TOKEN)), body).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.authorized(reqwest::Method::GET, path, None).await
    }

    /// `PUT` a rule; `body` is sent as it is (it may be malformed on purpose).
    pub async fn put_rule_raw(&self, domain: &str, code: &str, body: &str) -> Answer {
        self.authorized(reqwest::Method::PUT, &rule_path(domain, code), Some(body))
            .await
    }

    pub async fn put_rule(&self, domain: &str, code: &str, body: &Value) -> Answer {
        self.put_rule_raw(domain, code, &body.to_string()).await
    }

    pub async fn delete_rule(&self, domain: &str, code: &str) -> Answer {
        self.authorized(reqwest::Method::DELETE, &rule_path(domain, code), None)
            .await
    }

    pub async fn refresh(&self, domain: &str, code: &str) -> Answer {
        let path = format!("{}/refresh", rule_path(domain, code));
        self.authorized(reqwest::Method::POST, &path, None).await
    }

    /// `PUT /api/domains/{domain}` with `body`: creates the domain or replaces its origin.
    pub async fn put_domain(&self, domain: &str, body: &Value) -> Answer {
        let path = format!("/api/domains/{domain}");
        self.authorized(reqwest::Method::PUT, &path, Some(&body.to_string()))
            .await
    }

    /// `DELETE /api/domains/{domain}`.
    pub async fn delete_domain(&self, domain: &str) -> Answer {
        let path = format!("/api/domains/{domain}");
        self.authorized(reqwest::Method::DELETE, &path, None).await
    }

    /// `POST /api/domains/{domain}/purge` with `body`.
    pub async fn purge(&self, domain: &str, body: &Value) -> Answer {
        let path = format!("/api/domains/{domain}/purge");
        self.authorized(reqwest::Method::POST, &path, Some(&body.to_string()))
            .await
    }

    /// `POST /api/domains/{domain}/prefetch` with `body`.
    pub async fn prefetch(&self, domain: &str, body: &Value) -> Answer {
        let path = format!("/api/domains/{domain}/prefetch");
        self.authorized(reqwest::Method::POST, &path, Some(&body.to_string()))
            .await
    }

    pub async fn status(&self) -> Value {
        let answer = self.get("/api/status").await;
        assert_eq!(answer.status, 200, "GET /api/status: {answer:#?}");
        answer.json
    }

    /// The configuration version `/api/status` reports (it grows with every applied change).
    pub async fn version(&self) -> u64 {
        let status = self.status().await;
        status["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no version in {status}"))
    }

    /// `GET /api/domains`: every domain with its origin servers' state.
    pub async fn domains(&self) -> Vec<Value> {
        let answer = self.get("/api/domains").await;
        assert_eq!(answer.status, 200, "GET /api/domains: {answer:#?}");
        answer.json["domains"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /api/domains is not a list: {answer:#?}"))
            .clone()
    }

    /// A domain's rules with their page state.
    pub async fn rules(&self, domain: &str) -> Vec<Value> {
        let answer = self.get(&format!("/api/domains/{domain}/custom-pages")).await;
        assert_eq!(answer.status, 200, "GET rules: {answer:#?}");
        assert_eq!(answer.json["domain"], domain, "{answer:#?}");
        answer.json["custom_pages"]
            .as_array()
            .unwrap_or_else(|| panic!("no custom_pages list: {answer:#?}"))
            .clone()
    }

    /// The state the store shows for page `url` (`fresh`, `stale`, `missing`), looked up in
    /// every domain's rules; `None` while no rule names it.
    pub async fn page_state(&self, url: &str) -> Option<String> {
        for domain in self.domains().await {
            let name = domain["domain"].as_str().unwrap_or_default().to_string();
            for rule in self.rules(&name).await {
                let pages = rule["pages"].as_array().cloned().unwrap_or_default();
                if let Some(page) = pages.iter().find(|page| page["url"] == url) {
                    return page["state"].as_str().map(str::to_string);
                }
            }
        }
        None
    }
}

/// Waits until the edge holds a fresh copy of page `url` (within 10 s); panics otherwise.
pub async fn wait_fetched(edge: &Edge, url: &str) {
    let admin = Admin::new(edge);
    let fetched = time_until(Duration::from_secs(10), || async {
        admin.page_state(url).await.as_deref() == Some("fresh")
    })
    .await;
    assert!(
        fetched.is_some(),
        "the edge never fetched {url}\n{}",
        log_tail(edge)
    );
}
