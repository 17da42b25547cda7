use multiproc::process_entry;

struct Worker;

// Tabs and a multi-byte character before the fn on its line: the place is
// found by characters, as rustc counts columns.
impl Worker {
	#[process_entry]
	/* é, ü */ fn make(n: u32) -> u32 {
		n
	}
}

fn main() {}
