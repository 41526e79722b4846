//! A compressed checkpoint as one set of named tensors: a compressed file,
//! or every compressed shard of a directory (what `ecf compress DIR`
//! writes). What the framework integrations load from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{CompressedFile, StoredTensor};
use crate::error::{Error, Result};

/// The tensors of a compressed file, or of every compressed shard of a
/// checkpoint directory, by name.
pub struct CompressedCheckpoint {
    files: Vec<CompressedFile>,
    /// Where each tensor is: its file, and its place in the file's list.
    places: HashMap<String, (usize, usize)>,
}

impl CompressedCheckpoint {
    /// Opens `path`: a compressed file, or a directory whose compressed
    /// files are read ([`compressed_files`]). A tensor in two files is an
    /// error naming both.
    pub fn open(path: &Path) -> Result<Self> {
        let paths = compressed_files(path)?;
        let mut files = Vec::with_capacity(paths.len());
        let mut places: HashMap<String, (usize, usize)> = HashMap::new();
        for path in &paths {
            let file = CompressedFile::open(path)?;
            for (place, tensor) in file.tensors.iter().enumerate() {
                let name = &tensor.source.name;
                if let Some(&(earlier, _)) = places.get(name) {
                    return Err(Error::corrupt(
                        path,
                        Some(name),
                        format!("the tensor is also in {}", paths[earlier].display()),
                    ));
                }
                places.insert(name.clone(), (files.len(), place));
            }
            files.push(file);
        }
        Ok(CompressedCheckpoint { files, places })
    }

    /// The names of all tensors, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.places.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.places.contains_key(name)
    }

    /// Tensor `name` and the file that holds it.
    pub fn get(&self, name: &str) -> Option<(&CompressedFile, &StoredTensor)> {
        let &(file, place) = self.places.get(name)?;
        let file = &self.files[file];
        Some((file, &file.tensors[place]))
    }

    /// Every tensor, with the file that holds it, file by file.
    pub fn tensors(&self) -> impl Iterator<Item = (&CompressedFile, &StoredTensor)> {
        self.files
            .iter()
            .flat_map(|file| file.tensors.iter().map(move |tensor| (file, tensor)))
    }
}

/// The compressed files of a checkpoint: the file itself, or each
/// ecfloat-compressed `.safetensors` file of a directory (told by its
/// header, not its name), sorted by name.
pub fn compressed_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = super::safetensors_files(path)?;
    files.retain(|p| super::SourceFile::open(p).is_ok_and(|f| f.ecf_version().is_some()));
    if files.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no ecfloat-compressed .safetensors files in this directory",
            path.display()
        )));
    }
    Ok(files)
}
