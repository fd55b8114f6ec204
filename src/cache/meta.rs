//! A [`CacheMeta`] kept as its fields, in memory and on disk.
//!
//! `CacheMeta` cannot be cloned, and its own stored form costs a zstd compression to write and
//! a decompression and parse to read (about 15% of a memory hit's CPU when the memory tier kept
//! that form, and most of a disk hit's besides the file read). Both tiers keep the fields
//! instead: rebuilding a `CacheMeta` from them costs a header clone, and the disk's form
//! ([`StoredFields`]) is the header's lines as sent, names in their case.

use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// The fields of a [`CacheMeta`].
#[derive(Debug, Clone)]
pub struct MetaFields {
    /// Until when it is fresh.
    pub fresh_until: SystemTime,
    /// What age and freshness are counted from; it stands for `created` too when rebuilt,
    /// which no client-visible header depends on.
    pub updated: SystemTime,
    /// `stale-while-revalidate`, in seconds.
    pub stale_while_revalidate_sec: u32,
    /// `stale-if-error`, in seconds.
    pub stale_if_error_sec: u32,
    /// The variance of the request it answered (see [`super::key::variance`]).
    pub variance: Option<HashBinary>,
    /// Pingora's epoch override (a purge's time).
    pub epoch_override: Option<SystemTime>,
    /// The response header.
    pub header: ResponseHeader,
}

impl MetaFields {
    /// The fields of `meta`.
    pub fn of(meta: &CacheMeta) -> MetaFields {
        MetaFields {
            fresh_until: meta.fresh_until(),
            updated: meta.updated(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            epoch_override: meta.epoch_override(),
            header: meta.response_header_copy(),
        }
    }

    /// The `CacheMeta` these fields make.
    pub fn to_meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.updated,
            self.stale_while_revalidate_sec,
            self.stale_if_error_sec,
            self.header.clone(),
        );
        if let Some(variance) = self.variance {
            meta.set_variance(variance);
        }
        if let Some(epoch) = self.epoch_override {
            meta.set_epoch_override(epoch);
        }
        meta
    }

    /// Rough memory of the parsed header: names, values and the map's per-entry bookkeeping.
    pub fn header_size(&self) -> usize {
        const PER_HEADER: usize = 64;
        const BASE: usize = 256;
        BASE + self
            .header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + PER_HEADER)
            .sum::<usize>()
    }

    /// The form kept on disk.
    pub fn stored(&self) -> StoredFields {
        let header = &self.header;
        let lines = if header.has_case() {
            header
                .case_header_iter()
                .map(|(name, value)| {
                    (
                        String::from_utf8_lossy(name.as_slice()).into_owned(),
                        serde_bytes::ByteBuf::from(value.as_bytes()),
                    )
                })
                .collect()
        } else {
            header
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_string(),
                        serde_bytes::ByteBuf::from(value.as_bytes()),
                    )
                })
                .collect()
        };
        StoredFields {
            fresh_until_ms: millis(self.fresh_until),
            updated_ms: millis(self.updated),
            stale_while_revalidate_sec: self.stale_while_revalidate_sec,
            stale_if_error_sec: self.stale_if_error_sec,
            variance: self.variance,
            epoch_override_ms: self.epoch_override.map(millis),
            status: header.status.as_u16(),
            reason: header.get_reason_phrase().map(str::to_string),
            case: header.has_case(),
            lines,
        }
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn at(millis: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(millis)
}

/// [`MetaFields`] as stored on disk.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredFields {
    fresh_until_ms: u64,
    updated_ms: u64,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    epoch_override_ms: Option<u64>,
    status: u16,
    reason: Option<String>,
    /// Whether the header keeps its names' case.
    case: bool,
    /// The header's fields in order, names as sent.
    lines: Vec<(String, serde_bytes::ByteBuf)>,
}

impl StoredFields {
    /// The fields these make, or why they make none.
    pub fn fields(&self) -> Result<MetaFields, String> {
        let built = if self.case {
            ResponseHeader::build(self.status, Some(self.lines.len()))
        } else {
            ResponseHeader::build_no_case(self.status, Some(self.lines.len()))
        };
        let mut header = built.map_err(|e| format!("status {}: {e}", self.status))?;
        for (name, value) in &self.lines {
            let value = http::HeaderValue::from_bytes(value).map_err(|e| format!("header {name}: {e}"))?;
            header
                .append_header(name.clone(), value)
                .map_err(|e| format!("header {name}: {e}"))?;
        }
        if let Some(reason) = &self.reason {
            header
                .set_reason_phrase(Some(reason))
                .map_err(|e| format!("reason phrase: {e}"))?;
        }
        Ok(MetaFields {
            fresh_until: at(self.fresh_until_ms),
            updated: at(self.updated_ms),
            stale_while_revalidate_sec: self.stale_while_revalidate_sec,
            stale_if_error_sec: self.stale_if_error_sec,
            variance: self.variance,
            epoch_override: self.epoch_override_ms.map(at),
            header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_survive_the_stored_form_with_their_case_and_order() {
        let mut header = ResponseHeader::build(203, None).expect("header");
        header.append_header("X-Custom-Case", "one").expect("header");
        header.append_header("set-cookie", "a=1").expect("header");
        header.append_header("Set-Cookie", "b=2").expect("header");
        header.set_reason_phrase(Some("Fine Indeed")).expect("reason");
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut meta = CacheMeta::new(now + Duration::from_secs(60), now, 5, 7, header);
        meta.set_variance([9; 16]);
        let stored = MetaFields::of(&meta).stored();
        let bytes = rmp_serde::to_vec(&stored).expect("encode");
        let back: StoredFields = rmp_serde::from_slice(&bytes).expect("decode");
        let fields = back.fields().expect("fields");
        let rebuilt = fields.to_meta();
        assert_eq!(rebuilt.fresh_until(), now + Duration::from_secs(60));
        assert_eq!(rebuilt.updated(), now);
        assert_eq!(
            (rebuilt.stale_while_revalidate_sec(), rebuilt.stale_if_error_sec()),
            (5, 7)
        );
        assert_eq!(rebuilt.variance(), Some([9; 16]));
        let mut wire = bytes::BytesMut::new();
        rebuilt.response_header().header_to_h1_wire(&mut wire);
        let mut original = bytes::BytesMut::new();
        meta.response_header().header_to_h1_wire(&mut original);
        assert_eq!(wire, original);
        assert_eq!(rebuilt.response_header().get_reason_phrase(), Some("Fine Indeed"));
    }
}
