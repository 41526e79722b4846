//! Writing safetensors files: the header, and an output that appears under
//! its name only once it is complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value, json};
use tempfile::TempPath;

use crate::error::{Error, Result};

/// One tensor of a file being written; tensors are laid out in the order
/// given, back to back.
pub struct OutputTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub len: u64,
}

/// The length prefix and header JSON of a safetensors file, padded with
/// spaces so the data section starts on an 8-byte boundary.
pub(crate) fn header_bytes(metadata: &[(&str, String)], tensors: &[OutputTensor]) -> Vec<u8> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        let entries: Map<String, Value> = metadata
            .iter()
            .map(|(key, value)| (key.to_string(), Value::String(value.clone())))
            .collect();
        header.insert("__metadata__".to_string(), Value::Object(entries));
    }
    let mut offset = 0u64;
    for tensor in tensors {
        header.insert(
            tensor.name.clone(),
            json!({
                "dtype": tensor.dtype,
                "shape": tensor.shape,
                "data_offsets": [offset, offset + tensor.len],
            }),
        );
        offset += tensor.len;
    }
    let mut json = serde_json::to_vec(&Value::Object(header)).expect("JSON of strings and numbers");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut bytes = Vec::with_capacity(8 + json.len());
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    bytes
}

/// `header` (from [`header_bytes`]) with spaces after its JSON up to `len`
/// bytes in all, if it fits them.
pub(crate) fn pad_header(header: &[u8], len: usize) -> Option<Vec<u8>> {
    let json_len = len.checked_sub(8).filter(|_| header.len() <= len)?;
    let mut padded = Vec::with_capacity(len);
    padded.extend_from_slice(&(json_len as u64).to_le_bytes());
    padded.extend_from_slice(&header[8..]);
    padded.resize(len, b' ');
    Some(padded)
}

/// A tensor held in memory, to write.
pub struct TensorData<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: &'a [u64],
    pub bytes: &'a [u8],
}

/// Writes a safetensors file of tensors held in memory.
pub fn write_safetensors(
    path: &Path,
    metadata: &[(&str, String)],
    tensors: &[TensorData],
) -> Result<()> {
    let layout: Vec<OutputTensor> = tensors
        .iter()
        .map(|t| OutputTensor {
            name: t.name.to_string(),
            dtype: t.dtype.to_string(),
            shape: t.shape.to_vec(),
            len: t.bytes.len() as u64,
        })
        .collect();
    let mut writer = SafetensorsWriter::create(path, metadata, &layout)?;
    for tensor in tensors {
        writer.write(tensor.bytes)?;
    }
    writer.finish()
}

/// Writes a safetensors file as its tensors' bytes arrive: the header from
/// the layout first, then the bytes in layout order, in pieces of any size;
/// [`finish`](Self::finish) checks that they fill the layout.
pub struct SafetensorsWriter {
    file: BufWriter<File>,
    path: PathBuf,
    expected: u64,
    written: u64,
}

impl SafetensorsWriter {
    pub fn create(
        path: &Path,
        metadata: &[(&str, String)],
        layout: &[OutputTensor],
    ) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut writer = SafetensorsWriter {
            file: BufWriter::with_capacity(8 << 20, file),
            path: path.to_path_buf(),
            expected: layout.iter().map(|t| t.len).sum(),
            written: 0,
        };
        let header = header_bytes(metadata, layout);
        writer
            .file
            .write_all(&header)
            .map_err(|e| Error::io(path, e))?;
        Ok(writer)
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.written += bytes.len() as u64;
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn finish(mut self) -> Result<()> {
        if self.written != self.expected {
            return Err(Error::Usage(format!(
                "{}: {} tensor bytes written, the layout holds {}",
                self.path.display(),
                self.written,
                self.expected
            )));
        }
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// Outputs being written under their temporary names: what a run stopped
/// by a signal must remove ([`remove_partial_outputs`]).
static PARTIAL_OUTPUTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every output still being written: for a signal handler, before
/// the process ends without running destructors.
pub fn remove_partial_outputs() {
    let partial = PARTIAL_OUTPUTS.lock().unwrap_or_else(|e| e.into_inner());
    for path in partial.iter() {
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
    }
}

/// Keeps a temporary output's path in [`PARTIAL_OUTPUTS`] while it lives.
pub(crate) struct PartialOutput(PathBuf);

impl PartialOutput {
    pub(crate) fn register(path: &Path) -> Self {
        let mut partial = PARTIAL_OUTPUTS.lock().unwrap_or_else(|e| e.into_inner());
        partial.push(path.to_path_buf());
        PartialOutput(path.to_path_buf())
    }
}

impl Drop for PartialOutput {
    fn drop(&mut self) {
        let mut partial = PARTIAL_OUTPUTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(position) = partial.iter().position(|path| *path == self.0) {
            partial.swap_remove(position);
        }
    }
}

/// The directory an output is written in.
pub(crate) fn parent_directory(target: &Path) -> &Path {
    match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Refuses to write `bytes` where the file system has less room free.
pub fn check_free_space(target: &Path, bytes: u64) -> Result<()> {
    let directory = parent_directory(target);
    let available = fs4::available_space(directory).map_err(|e| Error::io(directory, e))?;
    if bytes > available {
        return Err(Error::InsufficientSpace {
            path: target.to_path_buf(),
            needed: bytes,
            available,
        });
    }
    Ok(())
}

/// An output file that gets its name only in [`AtomicOutput::commit`],
/// once complete. On Linux it is written as an unnamed file in the
/// target's directory (`O_TMPFILE`) and linked into place, so that even a
/// killed process leaves nothing behind; elsewhere, or on a file system
/// without unnamed files, it is written under a temporary name and renamed,
/// removed if dropped uncommitted or when a signal stops the process.
pub struct AtomicOutput {
    writer: BufWriter<File>,
    staging: Staging,
    target: PathBuf,
    force: bool,
}

/// Where an output lies until it is committed.
enum Staging {
    /// Nowhere: Linux's unnamed file.
    #[cfg(target_os = "linux")]
    Unnamed,
    /// Under a temporary name, removed if dropped uncommitted.
    Named(TempPath, PartialOutput),
}

impl AtomicOutput {
    /// Refuses, before any work is done, to replace an input, an existing
    /// file without `force`, or anything but a regular file.
    pub fn create(target: &Path, force: bool, inputs: &[&Path]) -> Result<Self> {
        check_target(target, force, inputs)?;
        let directory = parent_directory(target);
        if !directory.is_dir() {
            return Err(Error::io(
                target,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no directory {} to write it in", directory.display()),
                ),
            ));
        }
        let output = |file, staging| AtomicOutput {
            writer: BufWriter::with_capacity(1 << 20, file),
            staging,
            target: target.to_path_buf(),
            force,
        };
        #[cfg(target_os = "linux")]
        if let Some(file) = unnamed::create(directory).map_err(|e| Error::io(target, e))? {
            return Ok(output(file, Staging::Unnamed));
        }
        let mut builder = tempfile::Builder::new();
        builder.prefix(TEMPORARY_PREFIX);
        // A new output gets the permissions any new file would (0666 less
        // the umask), not the temporary file's private 0600.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let (file, temp_path) = builder
            .tempfile_in(directory)
            .map_err(|e| Error::io(target, e))?
            .into_parts();
        let partial = PartialOutput::register(&temp_path);
        Ok(output(file, Staging::Named(temp_path, partial)))
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .map_err(|e| Error::io(&self.target, e))
    }

    /// The underlying file, flushed, for bulk copies.
    pub fn file(&mut self) -> Result<&mut File> {
        self.writer
            .flush()
            .map_err(|e| Error::io(&self.target, e))?;
        Ok(self.writer.get_mut())
    }

    /// Makes the file durable and gives it its name.
    pub fn commit(self) -> Result<()> {
        let target = self.target;
        let file = self
            .writer
            .into_inner()
            .map_err(|e| Error::io(&target, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&target, e))?;
        let named = match self.staging {
            Staging::Named(temp_path, _partial) if self.force => {
                temp_path.persist(&target).map_err(|e| e.error)
            }
            Staging::Named(temp_path, _partial) => {
                temp_path.persist_noclobber(&target).map_err(|e| e.error)
            }
            #[cfg(target_os = "linux")]
            Staging::Unnamed => unnamed::link(&file, &target, self.force),
        };
        named.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::OutputExists {
                    path: target.clone(),
                }
            } else {
                Error::io(&target, e)
            }
        })
    }
}

/// The name an output has while it is written, where it has one.
pub(crate) const TEMPORARY_PREFIX: &str = ".ecf-partial-";

/// Linux's unnamed files: created in a directory without a name
/// (`O_TMPFILE`), given one by linking the open file into place.
#[cfg(target_os = "linux")]
mod unnamed {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::path::Path;

    use rustix::fs::{AtFlags, CWD, Mode, OFlags};

    /// An unnamed file in `directory`, or `None` where its file system (or
    /// a missing /proc, through which it is linked) does not allow one.
    pub(super) fn create(directory: &Path) -> io::Result<Option<File>> {
        if !Path::new("/proc/self/fd").is_dir() {
            return Ok(None);
        }
        // Mode 0666, less the umask, as any new file.
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        match rustix::fs::open(directory, flags, Mode::from_raw_mode(0o666)) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Names `file`, an unnamed file, `target`; replaces an existing
    /// `target` only with `force`.
    pub(super) fn link(file: &File, target: &Path, force: bool) -> io::Result<()> {
        let open_file = format!("/proc/self/fd/{}", file.as_raw_fd());
        let link_as = |name: &Path| -> io::Result<()> {
            rustix::fs::linkat(CWD, open_file.as_str(), CWD, name, AtFlags::SYMLINK_FOLLOW)?;
            Ok(())
        };
        if !force {
            return link_as(target);
        }
        // A link never replaces a file: link under a temporary name beside
        // the target, then rename that over it.
        let directory = super::parent_directory(target);
        let linked = tempfile::Builder::new()
            .prefix(super::TEMPORARY_PREFIX)
            .make_in(directory, |name| link_as(name))?;
        linked.persist(target).map_err(|e| e.error)?;
        Ok(())
    }
}

fn check_target(target: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    let Ok(metadata) = std::fs::symlink_metadata(target) else {
        return Ok(());
    };
    let Ok(existing) = target.canonicalize() else {
        return Ok(());
    };
    for input in inputs {
        if input.canonicalize().is_ok_and(|input| input == existing) {
            return Err(Error::OutputIsInput {
                path: target.to_path_buf(),
            });
        }
    }
    if !metadata.is_file() {
        return Err(Error::OutputNotAFile {
            path: target.to_path_buf(),
            kind: describe_file_type(&metadata.file_type()),
        });
    }
    if !force {
        return Err(Error::OutputExists {
            path: target.to_path_buf(),
        });
    }
    Ok(())
}

/// What a file that is not a regular one is, for a message.
pub(crate) fn describe_file_type(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_char_device() || file_type.is_block_device() {
            return "a device";
        }
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_and_parsable() {
        let tensors = [
            OutputTensor {
                name: "a".into(),
                dtype: "F32".into(),
                shape: vec![3],
                len: 12,
            },
            OutputTensor {
                name: "b".into(),
                dtype: "U8".into(),
                shape: vec![5],
                len: 5,
            },
        ];
        let bytes = header_bytes(&[("k", "v".to_string())], &tensors);
        let json_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(json_len % 8, 0);
        assert_eq!(bytes.len(), 8 + json_len);
        let mut file = bytes.clone();
        file.extend_from_slice(&[0u8; 17]);
        let parsed = safetensors::SafeTensors::deserialize(&file).unwrap();
        assert_eq!(parsed.tensor("b").unwrap().data().len(), 5);
    }
}
