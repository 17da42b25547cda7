//! A connection's frame reader: the input's first 4 bytes say how many
//! descriptors ride along and how the stream is cut; the rest is the stream.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (control, stream) = data.split_at(data.len().min(4));
    let mut c = [0u8; 4];
    c[..control.len()].copy_from_slice(control);
    multiproc::__private::fuzz::frame_reader(stream, u32::from_le_bytes(c));
});
