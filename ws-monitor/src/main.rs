mod flow;
fn main() {}
