use multiproc::process_entry;

struct NotSerde {
    value: u32,
}

// The error points at `NotSerde`, the argument at fault, not at `first`.
#[process_entry]
fn combine(first: u32, second: NotSerde) -> u32 {
    first + second.value
}

fn main() {}
