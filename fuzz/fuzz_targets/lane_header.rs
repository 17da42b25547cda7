//! A received lane: the announced length and first slot, then the lane's
//! shared header words.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::__private::fuzz::lane_header(data);
});
