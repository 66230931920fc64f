//! Shared test setup.

use rvm::{Options, Rvm, Storage};

/// A new RVM over two fresh disks of type `S`, with handles to both disks.
pub fn create<S: Storage + Clone + Default + 'static>(data_len: u64, opts: Options) -> (Rvm, S, S) {
    let (seg, log) = (S::default(), S::default());
    let rvm = Rvm::create(Box::new(seg.clone()), Box::new(log.clone()), data_len, opts).unwrap();
    (rvm, seg, log)
}
