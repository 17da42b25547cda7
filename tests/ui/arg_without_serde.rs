use multiproc::process_entry;

struct NotSerde {
    value: u32,
}

#[process_entry]
fn consume(input: NotSerde) -> u32 {
    input.value
}

fn main() {}
