//! A queue's shared region (words, then ring), then takes and puts.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::__private::fuzz::queue_records(data);
});
