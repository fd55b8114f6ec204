//! Property tests of everything that parses operator input: the configuration loader, the
//! status-code patterns, page URLs and domain names. Whatever the input, parsing never panics,
//! a rejection says what is wrong, and what a valid input means survives a round trip.

use custom_pages::filters::FilterRegistry;
use custom_pages::runtime::Runtime;
use custom_pages::source::{DomainEntry, Snapshot};
use custom_pages::spec::{self, CodePattern, DomainName, DomainSpec, EdgeSettings, Location, PageUrl};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn code_patterns_never_panic(input in ".{0,12}") {
        match input.parse::<CodePattern>() {
            Ok(pattern) => {
                // Whatever parsed matches only error statuses, and prints back to itself.
                prop_assert!((100..400).chain(600..700).all(|s| !pattern.matches(s)));
                prop_assert_eq!(pattern.to_string().parse::<CodePattern>().ok(), Some(pattern));
            }
            Err(message) => prop_assert!(!message.is_empty()),
        }
    }

    #[test]
    fn valid_code_patterns_round_trip(lo in 400u16..600, width in 0u16..100, class in 4u16..6) {
        let hi = (lo + width).min(599);
        let range = format!("{lo}-{hi}").parse::<CodePattern>().unwrap();
        prop_assert!(range.matches(lo) && range.matches(hi) && !range.matches(hi + 1));
        let exact = lo.to_string().parse::<CodePattern>().unwrap();
        prop_assert_eq!(exact, CodePattern::Exact(lo));
        let class_pattern = format!("{class}xx").parse::<CodePattern>().unwrap();
        prop_assert!(class_pattern.matches(class * 100 + 42));
    }

    #[test]
    fn page_urls_never_panic(input in "\\PC{0,40}|(https?://)?[a-z.\\x00-\\x1f%/?#:@\\[\\] ]{0,30}") {
        match input.parse::<PageUrl>() {
            Ok(url) => {
                prop_assert!(input.starts_with("http://") || input.starts_with("https://"));
                prop_assert!(!input.chars().any(|c| c.is_control() || c == ' '));
                prop_assert!(!url.host().is_empty());
                prop_assert!(url.path_and_query().starts_with('/'));
            }
            Err(message) => prop_assert!(!message.is_empty()),
        }
    }

    #[test]
    fn domain_names_never_panic(input in "\\PC{0,30}|\\*?\\.?[a-zA-Z0-9.\\-_*]{0,30}\\.?") {
        match input.parse::<DomainName>() {
            Ok(name) => prop_assert!(name.to_string().parse::<DomainName>().ok() == Some(name)),
            Err(message) => prop_assert!(message.contains("expected")),
        }
    }

    #[test]
    fn domain_files_never_panic(yaml in domain_file_like()) {
        let file = Location::File(PathBuf::from("fuzz.yaml"));
        match spec::parse_yaml::<DomainSpec>(file.clone(), &yaml) {
            Ok(spec) => {
                // Validation of a parsed spec never panics either; errors name the file.
                let snapshot = Snapshot {
                    edge: EdgeSettings::from_yaml(Path::new("edge.yaml"), "threads: 1\n").unwrap(),
                    domains: vec![DomainEntry { at: file.clone(), spec, revision: 0 }],
                    staged: Vec::new(),
                    errors: Vec::new(),
                    kept: Vec::new(),
                    from: "files",
                };
                if let Err(errors) = Runtime::check(&snapshot, &FilterRegistry::with_builtins()) {
                    prop_assert!(errors.0.iter().all(|e| e.at == file && !e.message.is_empty()));
                }
            }
            Err(e) => prop_assert!(e.at == file && !e.message.is_empty()),
        }
    }

    #[test]
    fn edge_files_never_panic(yaml in edge_file_like()) {
        let file = Path::new("conf/edge.yaml");
        if let Err(errors) = EdgeSettings::from_yaml(file, &yaml) {
            prop_assert!(errors.0.iter().all(|e| e.at == Location::File(file.into()) && !e.message.is_empty()));
        }
    }
}

/// YAML that looks like a domain file: known keys with values of every kind, some typos.
fn domain_file_like() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("1s".to_string()),
        Just("-5".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"127.0.0.1:80\"".to_string()),
        Just("[\"127.0.0.1:80\", \"h:0\"]".to_string()),
        Just("[{code: 404, url: \"http://a.com/e.html\"}]".to_string()),
        Just("[{code: [500, 700], url: \"x\"}]".to_string()),
        Just("[{code: \"5xx\", url: \"http://b.com/e.html\", redirect: 302, status: 404}]".to_string()),
        "\\PC{0,12}",
    ];
    let key = prop_oneof![
        Just("domain"),
        Just("origin"),
        Just("orign"),
        Just("cache"),
        Just("custom_pages"),
        Just("filters"),
        Just("servers"),
        Just("default_ttl"),
    ];
    let line = (key, value).prop_map(|(k, v)| format!("{k}: {v}"));
    let origin = prop_oneof![
        Just("origin: {servers: [\"127.0.0.1:8080\"]}".to_string()),
        Just("origin: {servers: [\"127.0.0.1:8080\"], read_timeout: 0s}".to_string()),
        Just(String::new()),
    ];
    (
        Just("domain: a.com".to_string()),
        origin,
        proptest::collection::vec(line, 0..4),
    )
        .prop_map(|(domain, origin, lines)| format!("{domain}\n{origin}\n{}\n", lines.join("\n")))
}

/// YAML that looks like an edge file.
fn edge_file_like() -> impl Strategy<Value = String> {
    let entry = prop_oneof![
        Just("listen: [\"127.0.0.1:0\"]"),
        Just("listen: []"),
        Just("listen: nowhere"),
        Just("threads: 0"),
        Just("threads: 99999999999999999999"),
        Just("cache: {memory: 1MiB}"),
        Just("cache: {memory: lots}"),
        Just("cache: {memory: 1KiB, max_object: 1MiB}"),
        Just("pages: {max_size: 0, refresh: 0s}"),
        Just("admin: {listen: \"[::1]:1\"}"),
        Just("server: {grace_period_seconds: -1}"),
        Just("server: {no_such_setting: 1}"),
        Just("access_log: off"),
        Just("\u{0}"),
    ];
    proptest::collection::vec(entry, 0..5).prop_map(|lines| lines.join("\n"))
}
