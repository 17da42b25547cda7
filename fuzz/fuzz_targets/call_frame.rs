//! The child's call frame: the input's first byte says how many descriptors
//! ride along and how the stream is cut; the rest is the control stream.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (n_fds, stream) = data.split_first().map_or((0, data), |(&n, rest)| (n, rest));
    multiproc::__private::fuzz::call_frame(stream, n_fds);
});
