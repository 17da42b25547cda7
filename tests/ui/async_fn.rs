use multiproc::process_entry;

#[process_entry]
async fn fetch(url: String) -> String {
    url
}

fn main() {}
