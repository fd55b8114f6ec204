//! Certificates from an ACME directory (RFC 8555) for the domains with `tls: {acme: true}`,
//! ordered with `instant-acme` over HTTP-01, installed into the TLS listeners' resolver and
//! renewed before they expire.
//!
//! - **Lifecycle.** A domain without a certificate (or past two thirds of its certificate's
//!   lifetime, or asked to renew) first looks in the store (a restart, another edge of the
//!   fleet), then orders. Until its first certificate is installed the default certificate
//!   serves it and its status says `pending`; a certificate in use keeps serving until its
//!   successor is installed.
//! - **Failures** wait `tls.acme.retry`, doubled per failure up to six hours, with jitter
//!   (a CA's `rateLimited` answer waits an hour at least), and orders per domain are bounded
//!   per hour (`tls.acme.orders_per_hour`): a domain whose challenge cannot succeed never
//!   hammers the CA.
//! - **Challenges.** The edge answers `GET /.well-known/acme-challenge/{token}` on its
//!   cleartext listeners before anything else (see [`AcmeManager::answer`]); in a fleet the
//!   answers are shared through the store, so whichever edge the CA reaches can give them, and
//!   one edge at a time orders for a domain (a lock on a lease).

pub mod store;

pub use store::{CertStore, FolderStore, StoredCert};

use crate::metrics::METRICS;
use crate::spec::AcmeSettings;
use crate::tls::{self, CertResolver, LoadedCert};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use log::{info, warn};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The path prefix of HTTP-01 challenges.
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// How long one edge may hold the right to order for a domain.
const LOCK_TTL: Duration = Duration::from_secs(300);
/// How often a domain waiting on another edge's order (or on the store) looks again.
const STORE_POLL: Duration = Duration::from_secs(2);
/// The longest wait between failed orders.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// How long a `rateLimited` answer of the CA holds further orders at least.
const RATE_LIMITED: Duration = Duration::from_secs(3600);
/// How often the manager looks for domains due.
const TICK: Duration = Duration::from_secs(1);
/// Orders under way at once.
const CONCURRENT_ORDERS: usize = 4;
/// The longest HTTP-01 token looked up (RFC 8555 tokens are 43 characters of base64url).
const MAX_TOKEN: usize = 128;
/// Bound of the CA's validation of one order, and of issuing its certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// What the API shows of a domain's certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    /// `file` or `acme`.
    pub source: &'static str,
    /// `pending` (none issued yet: the default certificate serves), `valid` or `expired`.
    pub state: &'static str,
    /// The issuer of the certificate in use.
    pub issuer: Option<String>,
    /// Its serial number (hex).
    pub serial: Option<String>,
    /// End of its validity (RFC 3339).
    pub not_after: Option<String>,
    /// When it is renewed (ACME).
    pub next_renewal: Option<String>,
    /// The last failure (ACME), kept until an order succeeds.
    pub last_error: Option<String>,
    /// When the next order may be made after a failure.
    pub next_attempt: Option<String>,
    /// Orders made by this edge since it started.
    pub orders: u64,
}

/// A certificate in use.
#[derive(Debug, Clone)]
struct Installed {
    not_before: SystemTime,
    not_after: SystemTime,
    issuer: String,
    serial: String,
}

impl Installed {
    fn of(loaded: &LoadedCert) -> Installed {
        Installed {
            not_before: loaded.not_before,
            not_after: loaded.not_after,
            issuer: loaded.issuer.clone(),
            serial: loaded.serial.clone(),
        }
    }

    /// Two thirds into its lifetime.
    fn renew_at(&self) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + life * 2 / 3
    }
}

/// What the manager knows of one domain.
#[derive(Debug, Default)]
struct Managed {
    installed: Option<Installed>,
    /// When to look at it again (none: now).
    next_check: Option<Instant>,
    /// When the next order may be made (after a failure).
    next_attempt: Option<SystemTime>,
    failures: u32,
    last_error: Option<String>,
    /// When the orders of the last hour were made.
    recent_orders: VecDeque<Instant>,
    orders: u64,
    /// An order or a look in the store is under way.
    busy: bool,
    /// Renew even if the certificate is not due.
    force: bool,
}

/// The account as kept: its credentials and the directory they belong to.
#[derive(Serialize, Deserialize)]
struct KeptAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Orders, installs and renews the certificates of ACME domains (see the module docs).
pub struct AcmeManager {
    settings: AcmeSettings,
    store: Arc<dyn CertStore>,
    resolver: Arc<CertResolver>,
    /// This edge's HTTP-01 answers, by token.
    challenges: RwLock<HashMap<String, String>>,
    domains: Mutex<BTreeMap<String, Managed>>,
    account: tokio::sync::Mutex<Option<Account>>,
    wake: tokio::sync::Notify,
    orders: tokio::sync::Semaphore,
}

impl AcmeManager {
    /// A manager ordering from `settings`' directory, keeping what it gets in `store` and
    /// serving it through `resolver`.
    pub fn new(
        settings: AcmeSettings,
        store: Arc<dyn CertStore>,
        resolver: Arc<CertResolver>,
    ) -> AcmeManager {
        AcmeManager {
            settings,
            store,
            resolver,
            challenges: RwLock::new(HashMap::new()),
            domains: Mutex::new(BTreeMap::new()),
            account: tokio::sync::Mutex::new(None),
            wake: tokio::sync::Notify::new(),
            orders: tokio::sync::Semaphore::new(CONCURRENT_ORDERS),
        }
    }

    /// The domains that want certificates now (exact names): new ones are looked at at once,
    /// gone ones stop being served.
    pub fn want(&self, hosts: &[String]) {
        let wanted: std::collections::HashSet<&str> = hosts.iter().map(String::as_str).collect();
        let mut domains = self.domains.lock();
        let gone: Vec<String> = domains
            .keys()
            .filter(|host| !wanted.contains(host.as_str()))
            .cloned()
            .collect();
        for host in gone {
            domains.remove(&host);
            self.resolver.uninstall(&host);
        }
        for host in hosts {
            domains.entry(host.clone()).or_default();
        }
        drop(domains);
        self.wake.notify_one();
    }

    /// The answer to an HTTP-01 challenge for `token` on `host`, if an order of this edge (or,
    /// in a fleet, of another) is waiting for it. The store is asked only for a host that
    /// gets its certificate from ACME and a token shaped like one: anyone can send the path.
    pub async fn answer(&self, host: &str, token: &str) -> Option<String> {
        if let Some(answer) = self.challenges.read().get(token) {
            return Some(answer.clone());
        }
        let shaped = (16..=MAX_TOKEN).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !shaped || !self.domains.lock().contains_key(host) {
            return None;
        }
        self.store.challenge(token).await
    }

    /// The certificate status of `host`, if it is an ACME domain.
    pub fn status(&self, host: &str) -> Option<CertStatus> {
        let domains = self.domains.lock();
        let managed = domains.get(host)?;
        let time = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        let installed = managed.installed.as_ref();
        let state = match installed {
            None => "pending",
            Some(cert) if cert.not_after < SystemTime::now() => "expired",
            Some(_) => "valid",
        };
        Some(CertStatus {
            source: "acme",
            state,
            issuer: installed.map(|c| c.issuer.clone()),
            serial: installed.map(|c| c.serial.clone()),
            not_after: installed.map(|c| time(c.not_after)),
            next_renewal: installed.map(|c| time(c.renew_at())),
            last_error: managed.last_error.clone(),
            next_attempt: managed.next_attempt.map(time),
            orders: managed.orders,
        })
    }

    /// How many certificates in use expire within `within`.
    pub fn expiring_within(&self, within: Duration) -> usize {
        let soon = SystemTime::now() + within;
        self.domains
            .lock()
            .values()
            .filter_map(|m| m.installed.as_ref())
            .filter(|c| c.not_after < soon)
            .count()
    }

    /// Orders a new certificate for `host` now (an operator's renewal: the bound per hour
    /// still holds) and waits for the outcome.
    pub async fn renew(&self, host: &str) -> Result<CertStatus, String> {
        {
            let mut domains = self.domains.lock();
            let managed = domains
                .get_mut(host)
                .ok_or_else(|| format!("{host} does not get its certificate from ACME"))?;
            if managed.busy {
                return Err(format!("an order for {host} is under way"));
            }
            managed.busy = true;
            managed.force = true;
        }
        self.maintain(host).await;
        let status = self.status(host).ok_or_else(|| format!("{host} is gone"))?;
        match (&status.last_error, status.state) {
            (Some(error), _) => Err(error.clone()),
            (None, "valid") => Ok(status),
            _ => Err(format!("{host} has no certificate yet")),
        }
    }

    /// Looks after every domain until the process stops.
    pub async fn run(self: Arc<Self>) {
        loop {
            let due: Vec<String> = {
                let now = Instant::now();
                let mut domains = self.domains.lock();
                domains
                    .iter_mut()
                    .filter(|(_, m)| !m.busy && m.next_check.is_none_or(|at| at <= now))
                    .map(|(host, m)| {
                        m.busy = true;
                        host.clone()
                    })
                    .collect()
            };
            for host in due {
                let manager = self.clone();
                tokio::spawn(async move { manager.maintain(&host).await });
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One look at `host` (marked busy by the caller): install what the store holds, order if
    /// due and allowed, and say when to look again.
    async fn maintain(&self, host: &str) {
        // Whatever ends the look (its result, a panic, a renewal whose caller went away), the
        // domain is not left busy: it is looked at again after `next`.
        let mut done = Done {
            manager: self,
            host,
            next: STORE_POLL,
        };
        done.next = self.maintain_once(host).await;
    }

    /// What [`maintain`](Self::maintain) does; returns how long until the next look.
    async fn maintain_once(&self, host: &str) -> Duration {
        let now = SystemTime::now();
        let (renew_at, force) = {
            let domains = self.domains.lock();
            let Some(managed) = domains.get(host) else {
                return STORE_POLL;
            };
            (managed.installed.as_ref().map(Installed::renew_at), managed.force)
        };
        let due = force || renew_at.is_none_or(|at| now >= at);
        if !due {
            return until(renew_at.unwrap_or(now));
        }
        // What the store holds: this edge's own before a restart, or another edge's.
        if !force {
            match self.store.cert(host).await {
                Ok(Some(stored)) => match self.install(host, &stored) {
                    Ok(installed) if now < installed.renew_at() => return until(installed.renew_at()),
                    Ok(_) => {}
                    Err(e) => warn!("acme: the certificate kept for {host} is not used: {e}"),
                },
                Ok(None) => {}
                Err(e) => {
                    self.failed(
                        host,
                        format!("the certificate store cannot be read: {e}"),
                        "store",
                    );
                    return STORE_POLL;
                }
            }
        }
        if let Some(wait) = self.order_wait(host) {
            return wait;
        }
        // A slot first, then the fleet's lock: the lock's lease never runs out while waiting.
        let Ok(_permit) = self.orders.acquire().await else {
            return STORE_POLL;
        };
        match self.store.lock(host, LOCK_TTL).await {
            Ok(true) => {}
            // Another edge orders: its certificate will be in the store.
            Ok(false) => return STORE_POLL,
            Err(e) => {
                self.failed(host, format!("the order lock cannot be taken: {e}"), "store");
                return STORE_POLL;
            }
        }
        {
            let mut domains = self.domains.lock();
            if let Some(managed) = domains.get_mut(host) {
                managed.orders += 1;
                managed.recent_orders.push_back(Instant::now());
            }
        }
        info!("acme: ordering a certificate for {host}");
        let ordered = self.order(host).await;
        let next = match ordered {
            Ok(stored) => match self
                .store
                .put_cert(host, &stored)
                .await
                .and_then(|()| self.install(host, &stored))
            {
                Ok(installed) => {
                    info!(
                        "acme: {host} has a new certificate, valid until {}",
                        humantime::format_rfc3339_seconds(installed.not_after)
                    );
                    let mut domains = self.domains.lock();
                    if let Some(managed) = domains.get_mut(host) {
                        managed.failures = 0;
                        managed.last_error = None;
                        managed.next_attempt = None;
                    }
                    until(installed.renew_at())
                }
                Err(e) => self.failed(host, format!("the new certificate cannot be kept: {e}"), "store"),
            },
            Err(e) => self.failed(host, e, "order"),
        };
        self.store.unlock(host).await;
        next
    }

    /// How long `host` must wait before its next order: after failures (backoff), or past the
    /// bound per hour; none if it may order now.
    fn order_wait(&self, host: &str) -> Option<Duration> {
        let mut domains = self.domains.lock();
        let managed = domains.get_mut(host)?;
        let now = Instant::now();
        while managed
            .recent_orders
            .front()
            .is_some_and(|at| now.duration_since(*at) > Duration::from_secs(3600))
        {
            managed.recent_orders.pop_front();
        }
        if !managed.force {
            if let Some(at) = managed.next_attempt.filter(|at| *at > SystemTime::now()) {
                return Some(until(at));
            }
        }
        if managed.recent_orders.len() >= self.settings.orders_per_hour as usize {
            let oldest = *managed.recent_orders.front()?;
            let wait = Duration::from_secs(3600).saturating_sub(now.duration_since(oldest));
            managed.last_error = Some(format!(
                "{} orders within the last hour (tls.acme.orders_per_hour): the next one waits",
                managed.recent_orders.len()
            ));
            managed.next_attempt = Some(SystemTime::now() + wait);
            return Some(wait);
        }
        None
    }

    /// Records a failure of `host`: logged, counted, shown, and waited out with backoff.
    fn failed(&self, host: &str, error: String, kind: &str) -> Duration {
        warn!("acme: {host}: {error}");
        METRICS.acme_failures.with_label_values(&[kind]).inc();
        let mut domains = self.domains.lock();
        let Some(managed) = domains.get_mut(host) else {
            return STORE_POLL;
        };
        managed.failures += 1;
        let doubled = self
            .settings
            .retry
            .saturating_mul(1 << (managed.failures - 1).min(16));
        let mut wait = doubled.min(MAX_BACKOFF);
        if error.contains("rateLimited") {
            wait = wait.max(RATE_LIMITED);
        }
        // ±20 %, so edges and domains that failed together do not retry together.
        let jitter = (SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
            % 401) as f64;
        let wait = wait.mul_f64(0.8 + jitter / 1000.0);
        managed.last_error = Some(error);
        managed.next_attempt = Some(SystemTime::now() + wait);
        wait
    }

    /// Checks a kept certificate and serves it for `host`.
    fn install(&self, host: &str, stored: &StoredCert) -> Result<Installed, String> {
        let names = (format!("the certificate of {host}"), format!("the key of {host}"));
        let loaded = tls::from_pem(
            stored.chain_pem.as_bytes(),
            stored.key_pem.as_bytes(),
            (&names.0, &names.1),
            SystemTime::now(),
        )
        .map_err(|(_, e)| e)?;
        if !loaded.names.iter().any(|name| name == host) {
            return Err(format!("it names {}, not {host}", loaded.names.join(", ")));
        }
        let installed = Installed::of(&loaded);
        let mut domains = self.domains.lock();
        let managed = domains
            .get_mut(host)
            .ok_or_else(|| format!("{host} no longer wants a certificate"))?;
        let newer = managed
            .installed
            .as_ref()
            .is_none_or(|c| c.serial != installed.serial);
        if newer {
            self.resolver.install(host, loaded.key.clone());
            managed.installed = Some(installed.clone());
        }
        Ok(installed)
    }

    /// The ACME account: kept, or made (and kept) on first use.
    async fn account(&self) -> Result<Account, String> {
        let mut account = self.account.lock().await;
        if let Some(account) = account.as_ref() {
            return Ok(account.clone());
        }
        let builder = || match &self.settings.ca_file {
            Some(path) => Account::builder_with_root(path)
                .map_err(|e| format!("tls.acme.ca_file {}: {e}", path.display())),
            None => Account::builder().map_err(|e| e.to_string()),
        };
        let kept = self.store.account().await?;
        let kept: Option<KeptAccount> = kept.and_then(|bytes| match serde_json::from_slice(&bytes) {
            Ok(kept) => Some(kept),
            Err(e) => {
                warn!("acme: the kept account does not read ({e}): making a new one");
                None
            }
        });
        let made = match kept.filter(|kept| kept.directory == self.settings.directory) {
            Some(kept) => builder()?
                .from_credentials(kept.credentials)
                .await
                .map_err(|e| format!("the ACME account cannot be used: {e}"))?,
            None => {
                let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (made, credentials) = builder()?
                    .create(&new, self.settings.directory.clone(), None)
                    .await
                    .map_err(|e| format!("no ACME account at {}: {e}", self.settings.directory))?;
                let kept = KeptAccount {
                    directory: self.settings.directory.clone(),
                    credentials,
                };
                let bytes = serde_json::to_vec(&kept).map_err(|e| e.to_string())?;
                self.store.put_account(&bytes).await?;
                info!("acme: account made at {}", self.settings.directory);
                made
            }
        };
        *account = Some(made.clone());
        Ok(made)
    }

    /// One order for `host` over HTTP-01: the chain and key issued, or why not (the CA's own
    /// words).
    async fn order(&self, host: &str) -> Result<StoredCert, String> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("the CA refused the order: {e}"))?;
        let mut tokens = Vec::new();
        let answered = self.answer_challenges(&mut order, &mut tokens).await;
        let issued = match answered {
            Ok(()) => self.finish(&mut order).await,
            Err(e) => Err(e),
        };
        for token in tokens {
            self.challenges.write().remove(&token);
            self.store.remove_challenge(&token).await;
        }
        issued
    }

    /// Publishes the HTTP-01 answer of each pending authorization and tells the CA.
    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        tokens: &mut Vec<String>,
    ) -> Result<(), String> {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization =
                authorization.map_err(|e| format!("the authorization cannot be read: {e}"))?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("the authorization is {other:?}")),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or("the CA offers no http-01 challenge")?;
            let token = challenge.token.clone();
            let answer = challenge.key_authorization().as_str().to_string();
            self.challenges.write().insert(token.clone(), answer.clone());
            tokens.push(token.clone());
            self.store.put_challenge(&token, &answer).await?;
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("the CA refused the challenge: {e}"))?;
        }
        Ok(())
    }

    /// Waits for the CA's validation, then finalizes and fetches the chain.
    async fn finish(&self, order: &mut instant_acme::Order) -> Result<StoredCert, String> {
        let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
        match order.poll_ready(&retries).await {
            Ok(OrderStatus::Ready) => {}
            Ok(status) => return Err(self.why_not(order, &format!("the order is {status:?}")).await),
            Err(e) => return Err(self.why_not(order, &e.to_string()).await),
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("the order cannot be finalized: {e}"))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("the certificate was not issued: {e}"))?;
        Ok(StoredCert { chain_pem, key_pem })
    }

    /// Why an order failed: the errors of its challenges (what the CA saw), else `fallback`.
    async fn why_not(&self, order: &mut instant_acme::Order, fallback: &str) -> String {
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authorization)) = authorizations.next().await {
            if let Ok(state) = authorization.refresh().await {
                reasons.extend(
                    state
                        .challenges
                        .iter()
                        .filter_map(|c| c.error.as_ref())
                        .map(|p| p.to_string()),
                );
            }
        }
        if reasons.is_empty() {
            format!("validation failed: {fallback}")
        } else {
            format!("validation failed: {}", reasons.join("; "))
        }
    }
}

/// Marks a domain's look done when dropped (see [`AcmeManager::maintain`]).
struct Done<'a> {
    manager: &'a AcmeManager,
    host: &'a str,
    next: Duration,
}

impl Drop for Done<'_> {
    fn drop(&mut self) {
        let mut domains = self.manager.domains.lock();
        if let Some(managed) = domains.get_mut(self.host) {
            managed.busy = false;
            managed.force = false;
            managed.next_check = Some(Instant::now() + self.next.min(Duration::from_secs(3600)));
        }
    }
}

/// How long until `at` (zero if past).
fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}
