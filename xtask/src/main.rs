//! Project tasks (the kernel lab lands here).

fn main() {}
