//! Two entries registered under one name are reported, with both places.

use multiproc::ErrorKind;

#[test]
fn two_entries_with_one_name_are_reported_with_both_places() {
    // Local items share the module's path, so these two register one name.
    #[multiproc::process_entry]
    fn work() -> u8 {
        1
    }
    fn second() {
        #[multiproc::process_entry]
        fn work() -> u8 {
            2
        }
        let err = multiproc::spawn!(work).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DuplicateEntry);
        let text = err.to_string();
        assert!(text.contains("duplicates::work"), "{text}");
        assert_eq!(text.matches("tests/duplicates.rs:").count(), 2, "{text}");
    }
    second();
    let err = multiproc::spawn!(work).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DuplicateEntry);
    assert!(multiproc::entries().contains(&"duplicates::work"));
}
