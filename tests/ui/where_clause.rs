use multiproc::process_entry;

#[process_entry]
fn total(values: Vec<u32>) -> u32
where
    u32: Copy,
{
    values.iter().sum()
}

fn main() {}
