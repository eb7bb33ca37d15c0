//! Wall-clock helpers.

/// Seconds since the Unix epoch (0 for a clock set before it).
pub fn unix_now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

/// The current UTC time as `YYYY-MM-DD-HH-MM-SS-mmm`: sorts as it reads and is safe in file
/// names (Qdrant names its snapshots the same way).
pub fn file_stamp() -> String {
    chrono::Utc::now().format("%Y-%m-%d-%H-%M-%S-%3f").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_stamp_is_the_utc_time_in_sortable_fields() {
        let s = super::file_stamp();
        let fields: Vec<&str> = s.split('-').collect();
        assert_eq!(fields.iter().map(|f| f.len()).collect::<Vec<_>>(), [4, 2, 2, 2, 2, 2, 3], "{s}");
        assert!(fields.iter().all(|f| f.bytes().all(|b| b.is_ascii_digit())), "{s}");
        assert!(super::unix_now() > 1_700_000_000);
    }
}
