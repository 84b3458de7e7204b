mod support;
fn main() {
    support::enter_workers();
    support::run(vec![]);
}
