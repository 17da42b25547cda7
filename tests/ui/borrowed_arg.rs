use multiproc::process_entry;

#[process_entry]
fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn main() {}
