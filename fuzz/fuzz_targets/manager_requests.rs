//! A manager server's requests: the input's first byte is how many bytes
//! the server gets per read; the rest, records of 2-byte headers and
//! frames (see `__private::fuzz::manager_requests`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::__private::fuzz::manager_requests(data);
});
