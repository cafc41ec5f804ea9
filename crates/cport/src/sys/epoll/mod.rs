//! STUB: being written.
use std::io;
use std::marker::PhantomData;
use crate::port::Config;

pub(crate) struct Driver<T>(PhantomData<T>);
impl<T: Send + 'static> Driver<T> {
    pub(crate) fn new(_c: &Config) -> io::Result<Self> { Err(io::Error::new(io::ErrorKind::Unsupported, "stub")) }
}
