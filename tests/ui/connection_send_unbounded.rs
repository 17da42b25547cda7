// A generic helper that forgot `T: Serialize`: the error says the method's
// bounds are not met, not that `send` is a private field.
use multiproc::Connection;

fn forward<T>(conn: &Connection<T>, value: &T) {
    conn.send(value).unwrap();
}

fn main() {
    let _ = forward::<u32>;
}
