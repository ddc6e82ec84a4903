//! Which object keys can be file names, and what happens to those that cannot:
//! they are left out of listings, never fail one. Each such key is counted in
//! `hotmount_s3_keys_skipped_total{name,reason}` and logged once per mount,
//! so that a bucket's content can never take a dataset down (doc/SEMANTICS.md,
//! "Keys that are not listed").

use std::collections::HashSet;
use std::sync::Mutex;

use crate::metrics::Metrics;

/// The longest name a directory entry may have (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// Distinct skipped keys remembered per mount for "count and log once"; past
/// this the set starts again (a key may then be counted a second time).
const MAX_REMEMBERED_SKIPS: usize = 10_000;

/// Why a key is not in a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// A segment holds an ASCII control character (`\n`, `\t`, `\r`, ...):
    /// no request through the object store can name it, and tools that read
    /// names line by line would break on it.
    ControlCharacter,
    /// A segment is `.` or `..`: it would name the directory itself or its
    /// parent, not the object.
    DotSegment,
    /// An empty segment (`a//b`, a leading `/`): no file name is empty.
    EmptySegment,
    /// A segment longer than 255 bytes (NAME_MAX).
    NameTooLong,
}

impl SkipReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::ControlCharacter => "control_character",
            SkipReason::DotSegment => "dot_segment",
            SkipReason::EmptySegment => "empty_segment",
            SkipReason::NameTooLong => "name_too_long",
        }
    }

    /// Why the object store could not take `key` as a path (a key it left
    /// out of a listing page): the first problem found, in the order the
    /// store checks them.
    pub fn of_unparseable(key: &str) -> SkipReason {
        if key.chars().any(|c| c.is_ascii_control()) {
            return SkipReason::ControlCharacter;
        }
        let trimmed = key.strip_suffix('/').unwrap_or(key);
        if trimmed
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            SkipReason::DotSegment
        } else {
            SkipReason::EmptySegment
        }
    }
}

/// The skipped keys one mount has already counted and logged.
#[derive(Debug, Default)]
pub struct SkippedKeys {
    seen: Mutex<HashSet<String>>,
}

impl SkippedKeys {
    /// Records that `key` was left out for `reason`: the first time, counts
    /// it for `dataset` and logs it; later listings of the same key are quiet.
    pub fn note(&self, metrics: &Metrics, dataset: &str, key: &str, reason: SkipReason) {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.contains(key) {
                return;
            }
            if seen.len() >= MAX_REMEMBERED_SKIPS {
                seen.clear();
            }
            seen.insert(key.to_string());
        }
        metrics
            .s3_keys_skipped
            .with_label_values(&[dataset, reason.label()])
            .inc();
        tracing::warn!(
            dataset,
            key = ?key,
            reason = reason.label(),
            "object key left out of the listing: it cannot be a file name"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unparseable_keys_are_classified_by_their_first_problem() {
        let cases = [
            ("a\nb", SkipReason::ControlCharacter),
            ("dir/a\tb", SkipReason::ControlCharacter),
            ("a\r", SkipReason::ControlCharacter),
            ("x\x7f", SkipReason::ControlCharacter),
            ("../a/\n", SkipReason::ControlCharacter),
            ("a/../b", SkipReason::DotSegment),
            ("./b", SkipReason::DotSegment),
            ("a/..", SkipReason::DotSegment),
            ("a/./", SkipReason::DotSegment),
            ("a//b", SkipReason::EmptySegment),
            ("a//", SkipReason::EmptySegment),
            ("//a", SkipReason::EmptySegment),
        ];
        for (key, reason) in cases {
            assert_eq!(SkipReason::of_unparseable(key), reason, "{key:?}");
        }
    }

    #[test]
    fn a_key_is_counted_and_logged_once() {
        let metrics = Metrics::new();
        let skipped = SkippedKeys::default();
        for _ in 0..3 {
            skipped.note(&metrics, "ds", "a\nb", SkipReason::ControlCharacter);
        }
        skipped.note(&metrics, "ds", "a//b", SkipReason::EmptySegment);
        let count = |reason: &str| {
            metrics
                .s3_keys_skipped
                .with_label_values(&["ds", reason])
                .get()
        };
        assert_eq!(count("control_character"), 1);
        assert_eq!(count("empty_segment"), 1);
    }
}
