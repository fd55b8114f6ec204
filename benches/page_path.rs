//! Micro-benchmark of the per-request custom page path, through the library's public API:
//! choosing the rule, rewriting the origin's error header in place, handing the page body over,
//! and the built-in default page.
//!
//! `cargo bench --bench page_path` (add `-- --quick` or `--measurement-time 2` to shorten it).

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use custom_pages::pages::response::{default_page, rewrite_in_place, Body};
use custom_pages::pages::rules::select;
use custom_pages::pages::Rule;
use custom_pages::spec::{CodePattern, PageUrl, Source};
use http::HeaderValue;
use pingora_http::{RequestHeader, ResponseHeader};

fn rule(code: CodePattern, source: Source, url: &str) -> Rule {
    Rule {
        source,
        ..Rule::in_place(code, url.parse::<PageUrl>().expect("valid page URL"))
    }
}

/// A realistic domain: five rules of every pattern kind, the exact 404 last in the file so the
/// whole list is always scanned.
fn rules() -> Vec<Rule> {
    vec![
        rule(
            CodePattern::Class(5),
            Source::Any,
            "http://www.example.com/errors/5xx.html",
        ),
        rule(
            CodePattern::Range(500, 504),
            Source::Edge,
            "http://www.example.com/errors/down.html",
        ),
        rule(
            CodePattern::List(vec![401, 403]),
            Source::Any,
            "http://www.example.com/errors/denied.html",
        ),
        rule(
            CodePattern::Class(4),
            Source::Origin,
            "http://www.example.com/errors/4xx.html",
        ),
        rule(
            CodePattern::Exact(404),
            Source::Any,
            "http://www.example.com/errors/404.html",
        ),
    ]
}

/// An origin 404 as a typical origin sends it (nginx/Apache-like plus CDN-relevant headers).
fn origin_404() -> ResponseHeader {
    let mut resp = ResponseHeader::build(404, Some(16)).unwrap();
    for (k, v) in [
        ("server", "nginx/1.22.1"),
        ("date", "Tue, 25 Nov 2025 09:11:56 GMT"),
        ("content-type", "text/html"),
        ("content-length", "153"),
        ("connection", "keep-alive"),
        ("etag", "\"6561b7c4-99\""),
        ("last-modified", "Sat, 25 Nov 2023 09:00:52 GMT"),
        ("cache-control", "max-age=60"),
        ("vary", "Accept-Encoding"),
        ("access-control-allow-origin", "*"),
        ("x-request-id", "6f1c2a8e4b7d4e0b9a3c5d7e8f901234"),
        ("set-cookie", "session=abc123; Path=/; HttpOnly"),
    ] {
        resp.append_header(k, v).unwrap();
    }
    resp
}

fn page_body() -> Body {
    let mut html = String::from("<!DOCTYPE html>\n<html><head><title>Not found</title></head><body>\n");
    while html.len() < 1000 {
        html.push_str("<p>The page you asked for is not here. Try the home page.</p>\n");
    }
    html.push_str("</body></html>\n");
    Body {
        bytes: Bytes::from(html),
        content_type: HeaderValue::from_static("text/html; charset=utf-8"),
    }
}

/// A domain with 50 rules for 404 that each name their own part of the site (paths under
/// `/section-N/`, every other one with a method too), in front of the five of [`rules`]: the
/// request matches none of them, so every condition is tried before the default 404.
fn conditional_rules() -> Vec<Rule> {
    use custom_pages::spec::RuleSpec;
    let mut all: Vec<Rule> = (0..50)
        .map(|i| {
            let methods = if i % 2 == 0 { "\n  methods: [GET, HEAD]" } else { "" };
            let yaml = format!(
                "code: 404\nurl: http://www.example.com/errors/section-{i}.html\nwhen:\n  paths: [\"/section-{i}/*\", \"/section-{i}/**/*.html\"]{methods}\n"
            );
            let spec: RuleSpec = serde_yaml::from_str(&yaml).expect("a rule spec");
            Rule::from_spec(i, &spec).expect("a conditional rule")
        })
        .collect();
    all.extend(rules());
    all
}

fn bench(c: &mut Criterion) {
    let rules = rules();
    let conditional = conditional_rules();
    let page = page_body();
    let req = RequestHeader::build("GET", b"/shop/items/42?color=red", None).expect("request");

    let mut g = c.benchmark_group("rules");
    g.bench_function("select_404_origin", |b| {
        b.iter(|| select(black_box(&rules), &req, black_box(404), Source::Origin))
    });
    g.bench_function("select_502_edge", |b| {
        b.iter(|| select(black_box(&rules), &req, black_box(502), Source::Edge))
    });
    g.bench_function("select_no_match_200", |b| {
        b.iter(|| select(black_box(&rules), &req, black_box(200), Source::Origin))
    });
    // Issue 30's bound: 50 conditional rules cost at most 1 µs more than one rule.
    g.bench_function("select_404_one_rule", |b| {
        b.iter(|| select(black_box(&rules[4..]), &req, black_box(404), Source::Origin))
    });
    g.bench_function("select_404_behind_50_conditions", |b| {
        b.iter(|| select(black_box(&conditional), &req, black_box(404), Source::Origin))
    });
    g.finish();

    let mut g = c.benchmark_group("response");
    // The header clone is the setup, not measured: only the rewrite is.
    let template = origin_404();
    g.bench_function("rewrite_in_place_404", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |resp| rewrite_in_place(resp, 404, black_box(&page)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("body_handoff_1k", |b| b.iter(|| black_box(&page).clone()));
    g.bench_function("default_page_502", |b| b.iter(|| default_page(black_box(502))));
    g.finish();

    // The whole path for one origin 404: select, rewrite, hand the body over.
    c.bench_function("page_path/origin_404_total", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |resp| {
                let rule = select(black_box(&rules), &req, 404, Source::Origin).unwrap();
                let body = page.clone();
                rewrite_in_place(resp, rule.status.unwrap_or(404), &body).unwrap();
                body.bytes
            },
            BatchSize::SmallInput,
        )
    });
}

/// A plain page is handed over as it is; a template page is filled per response.
fn templates(c: &mut Criterion) {
    use custom_pages::pages::template::{Template, Values};
    let plain = page_body();
    let mut with_fields = String::from(std::str::from_utf8(&plain.bytes).unwrap_or_default());
    with_fields.insert_str(
        with_fields.len() - 16,
        "<p>{{status}} {{reason}} at {{host}}{{path}}, request {{request_id}}</p>\n",
    );
    let templated = Bytes::from(with_fields);
    let (plain_template, _) = Template::parse(&plain.bytes, "text/html");
    assert!(plain_template.is_none(), "a plain page has no template");
    let (template, _) = Template::parse(&templated, "text/html");
    let template = template.expect("a template");
    let values = Values {
        status: 404,
        host: "www.example.com",
        path: "/a/b/missing",
        request_id: "6f1c2a8e4b7d4e0b9a3c5d7e",
    };
    let mut g = c.benchmark_group("template");
    g.bench_function("plain_page_1k", |b| b.iter(|| black_box(&plain).bytes.clone()));
    g.bench_function("template_page_1k", |b| {
        b.iter(|| template.render(black_box(&templated), &values))
    });
    g.finish();
}

criterion_group!(benches, bench, templates);
criterion_main!(benches);
