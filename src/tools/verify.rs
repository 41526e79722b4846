//! `verify`: decode a compressed file, or every shard of a compressed
//! directory, on a backend, checking every checksum and (on every backend)
//! every chunk's sync metadata.

use std::path::Path;

use crate::backend::Backend;
use crate::container::{self, DecodeChecks, Progress};
use crate::error::Result;

/// Decodes everything in `input` on `backend` and checks every checksum.
pub fn verify_file_on(
    input: &Path,
    backend: &dyn Backend,
    progress: &Progress,
) -> Result<DecodeChecks> {
    container::verify_file_with(input, &decoder(backend), progress)
}

/// Every shard of a compressed directory, by its name in the directory.
pub fn verify_directory_on(
    input: &Path,
    backend: &dyn Backend,
    progress: &Progress,
) -> Result<Vec<(String, DecodeChecks)>> {
    container::verify_directory_with(input, &decoder(backend), progress)
}

fn decoder(
    backend: &dyn Backend,
) -> impl Fn(&crate::codec::EncodedView, &crate::codec::BlockIndex, &mut [u8]) -> Result<()> + Sync + '_
{
    move |view, index, out| backend.decode_to_host(view, index, out)
}
