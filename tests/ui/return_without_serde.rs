use multiproc::process_entry;

struct NotSerde;

#[process_entry]
fn produce(n: u32) -> NotSerde {
    let _ = n;
    NotSerde
}

fn main() {}
