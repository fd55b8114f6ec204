//! Which page fits the client: the media type by `Accept` (RFC 9110 §12.5.1, q-values and
//! wildcards, ties to the rule's order) and the language by `Accept-Language` (RFC 4647
//! lookup). Pure functions over header values.

/// One media range of `Accept` with its weight (thousandths).
struct Range<'a> {
    kind: &'a str,
    subtype: &'a str,
    q: u16,
}

/// Parses a weight (`q=0.5`) into thousandths; an invalid one makes the range unusable.
fn weight(params: &str) -> Option<u16> {
    for param in params.split(';').filter(|p| !p.trim().is_empty()) {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("q") {
            let value = value.trim();
            let q: f32 = value.parse().ok().filter(|q| (0.0..=1.0).contains(q))?;
            return Some((q * 1000.0).round() as u16);
        }
    }
    Some(1000)
}

fn ranges(accept: &str) -> Vec<Range<'_>> {
    accept
        .split(',')
        .filter_map(|item| {
            let (range, params) = item.split_once(';').unwrap_or((item, ""));
            // A range with parameters besides q (`text/html;level=1`) names a variant of the
            // type that no page here has.
            let only_q = params
                .split(';')
                .all(|p| p.trim().is_empty() || p.trim().to_ascii_lowercase().starts_with("q="));
            if !only_q {
                return None;
            }
            let (kind, subtype) = range.trim().split_once('/')?;
            Some(Range {
                kind: kind.trim(),
                subtype: subtype.trim(),
                q: weight(params)?,
            })
        })
        .collect()
}

/// How much `accept` wants `media` (`type/subtype`): the weight of the most specific range
/// matching it, in thousandths (0: not acceptable). No `Accept` accepts everything.
pub fn acceptance(accept: Option<&str>, media: &str) -> u16 {
    match_of(accept, media).1
}

/// How specifically (3: named, 2: `type/*`, 1: `*/*`, 0: not at all or no `Accept`) and how
/// much `accept` wants `media`.
fn match_of(accept: Option<&str>, media: &str) -> (u8, u16) {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return (0, 1000);
    };
    let (kind, subtype) = media.split_once('/').unwrap_or((media, ""));
    let mut best: Option<(u8, u16)> = None;
    for range in ranges(accept) {
        let specificity =
            if range.kind.eq_ignore_ascii_case(kind) && range.subtype.eq_ignore_ascii_case(subtype) {
                3
            } else if range.kind.eq_ignore_ascii_case(kind) && range.subtype == "*" {
                2
            } else if range.kind == "*" && range.subtype == "*" {
                1
            } else {
                continue;
            };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, range.q));
        }
    }
    best.unwrap_or((0, 0))
}

/// The index of the media type in `offered` that `accept` wants most: the highest weight,
/// then a type the client named over one it only accepts by wildcard, then the first;
/// `None` when it accepts none of them.
pub fn choose_media(accept: Option<&str>, offered: &[&str]) -> Option<usize> {
    let mut chosen: Option<(usize, (u16, u8))> = None;
    for (i, media) in offered.iter().enumerate() {
        let (specificity, q) = match_of(accept, media);
        if q > 0 && chosen.is_none_or(|(_, best)| (q, specificity) > best) {
            chosen = Some((i, (q, specificity)));
        }
    }
    chosen.map(|(i, _)| i)
}

/// RFC 4647 lookup: the index of the language tag in `offered` (lower case) that the
/// highest-weighted range of `accept_language` reaches by truncation (`fr-ch` → `fr`), or
/// `None` for the default.
pub fn choose_language(accept_language: Option<&str>, offered: &[&str]) -> Option<usize> {
    let accept_language = accept_language?;
    let mut ranges: Vec<(u16, usize, String)> = accept_language
        .split(',')
        .enumerate()
        .filter_map(|(order, item)| {
            let (range, params) = item.split_once(';').unwrap_or((item, ""));
            let range = range.trim().to_ascii_lowercase();
            (!range.is_empty() && range != "*").then_some(())?;
            Some((weight(params)?, order, range))
        })
        .filter(|(q, ..)| *q > 0)
        .collect();
    // Highest weight first; equal weights keep the client's order.
    ranges.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, range) in ranges {
        let mut candidate = range.as_str();
        loop {
            if let Some(i) = offered.iter().position(|tag| *tag == candidate) {
                return Some(i);
            }
            match candidate.rfind('-') {
                Some(cut) => {
                    candidate = &candidate[..cut];
                    // A single-letter subtag is not left dangling (RFC 4647 §3.4).
                    if candidate.len() >= 2 && candidate.as_bytes()[candidate.len() - 2] == b'-' {
                        candidate = &candidate[..candidate.len() - 2];
                    }
                }
                None => break,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERED: [&str; 3] = ["text/html", "application/json", "text/plain"];

    #[test]
    fn accept_with_weights_wildcards_and_ties() {
        let pick = |accept: Option<&str>| choose_media(accept, &OFFERED);
        assert_eq!(pick(None), Some(0));
        assert_eq!(pick(Some("*/*")), Some(0), "a tie goes to the rule's order");
        assert_eq!(pick(Some("application/json")), Some(1));
        assert_eq!(pick(Some("text/*")), Some(0));
        assert_eq!(pick(Some("text/html;q=0.5, application/json")), Some(1));
        assert_eq!(pick(Some("text/html, application/xhtml+xml, */*;q=0.8")), Some(0));
        assert_eq!(pick(Some("application/json;q=0.9, text/plain;q=0.9")), Some(1));
        assert_eq!(
            pick(Some("text/*;q=0.2, text/plain")),
            Some(2),
            "the most specific range counts"
        );
        assert_eq!(pick(Some("image/png")), None);
        assert_eq!(pick(Some("text/html;q=0")), None);
        assert_eq!(pick(Some("text/html;q=2")), None, "an invalid weight is no range");
        assert_eq!(
            pick(Some("text/html;level=1;q=0, text/html")),
            Some(0),
            "other parameters: no match"
        );
        assert_eq!(
            pick(Some("application/json, text/plain, */*")),
            Some(1),
            "named beats wildcard"
        );
        assert_eq!(pick(Some("application/json, */*;q=0.1")), Some(1));
    }

    #[test]
    fn acceptance_is_the_weight_of_the_most_specific_matching_range() {
        let html = |accept: Option<&str>| acceptance(accept, "text/html");
        assert_eq!(html(None), 1000, "no Accept accepts everything");
        assert_eq!(html(Some("text/html;q=0.5, */*;q=0.1")), 500);
        assert_eq!(html(Some("text/*;q=0.3")), 300);
        assert_eq!(html(Some("*/*;q=0.1")), 100);
        assert_eq!(html(Some("TEXT/HTML;Q=0.4")), 400, "case does not matter");
        // A range matches only its own type: another subtype, another type's wildcard, no.
        assert_eq!(html(Some("text/plain")), 0);
        assert_eq!(html(Some("image/*")), 0);
        assert_eq!(html(Some("application/json, image/*")), 0);
        // Of two ranges as specific, the first counts.
        assert_eq!(html(Some("text/html;q=0.2, text/html;q=0.9")), 200);
    }

    #[test]
    fn language_lookup_truncates_and_weighs() {
        let offered = ["zh", "fr"];
        let pick = |al: &str| choose_language(Some(al), &offered);
        assert_eq!(pick("fr-CH, fr;q=0.9"), Some(1));
        assert_eq!(pick("de, zh-Hant-TW;q=0.5"), Some(0));
        assert_eq!(pick("de"), None);
        assert_eq!(pick("*"), None);
        assert_eq!(pick("fr;q=0, zh;q=0.1"), Some(0));
        assert_eq!(pick("fr-x-private"), Some(1));
        assert_eq!(pick("fr;q=0"), None, "q=0 is not acceptable");
        assert_eq!(choose_language(None, &offered), None);
        // Truncation drops a single-letter subtag with the one after it (RFC 4647 §3.4).
        assert_eq!(
            choose_language(Some("de-a-bc"), &["de-a", "de"]),
            Some(1),
            "de-a-bc → de, never the dangling de-a"
        );
        assert_eq!(
            choose_language(Some("zh-hant-x-yz"), &["zh-hant-x", "zh-hant"]),
            Some(1)
        );
    }
}
