//! Compressed checkpoints in burn (feature `burn`).
//!
//! [`EcfStore`] is a burn-store [`ModuleStore`]: a module loads from a
//! compressed file, or a directory of compressed shards, as it loads from
//! the original with burn-store's `SafetensorsStore`, with the same options
//! (key remapping, filters, partial loads, validation, adapters such as
//! `PyTorchToBurnAdapter` and `FloatCastAdapter`) and the same
//! [`ApplyResult`]. Each tensor is decoded when burn-store's applier asks
//! for its bytes, checked against the checksum recorded at compression,
//! and then made a burn tensor by burn-store itself: the dtype it keeps or
//! the conversion an adapter makes are burn's own, so a module loaded from
//! the compressed checkpoint holds the bits it holds when loaded from the
//! original, on every burn device.
//!
//! Saving ([`ModuleStore::collect_from`]) writes the module's tensors
//! compressed.
//!
//! [`SharedDevice`] is one wgpu device for ecfloat's decoder and burn: its
//! [`decode_tensor`](SharedDevice::decode_tensor) decodes a tensor with the
//! WGSL decoder straight into a burn tensor's buffer, widened from BF16 or
//! F16 to F32 on the device where asked, with the bits burn's own loading
//! gives. A store [`on_shared_device`](EcfStore::on_shared_device) loads
//! that way every float parameter on that device whose adapter asks for
//! nothing the device cannot do; the decoder checks every block as it
//! decodes (the checksum, which needs the decoded bytes on the host, is
//! checked on the host path only, as candle's and the runtime's GPU paths
//! do).
//!
//! [`CodedWeights`] and [`CodedLinear`] keep linear weights coded (the
//! DFloat11 mode) and decode each just before its layer runs, into one
//! reused buffer; [`bert::BertConfig::init_kept_coded`] builds a BERT that
//! way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod apply;
pub mod bert;
mod coded;
mod gpu;

pub use coded::{CodedLinear, CodedMemory, CodedWeight, CodedWeights};
pub use gpu::SharedDevice;

use ::burn::tensor::{Bytes, DType};
use burn_store::burn_pack::{Error as PackError, Tensor as PackTensor};
use burn_store::{
    ApplyResult, IdentityAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot, ModuleStore,
    PathFilter,
};

use crate::container::{CompressOptions, CompressedCheckpoint, compress_file, cpu_decoder};
use crate::error::Error;

/// What can go wrong loading from or saving to an [`EcfStore`].
#[derive(Debug, thiserror::Error)]
pub enum EcfStoreError {
    /// The compressed checkpoint could not be opened or written; the
    /// message names the file, and the tensor where there is one.
    #[error(transparent)]
    Ecfloat(#[from] Error),
    /// The module asked for tensors the checkpoint lacks (and partial
    /// loads were not allowed): burn-store's summary of the load.
    #[error("Tensor not found: {0}")]
    TensorNotFound(String),
    /// Some tensors could not be applied (a shape or dtype mismatch, a
    /// tensor that failed to decode) and validation was on.
    #[error("Validation failed: {0}")]
    ValidationFailed(String),
}

/// A compressed checkpoint as a burn-store [`ModuleStore`]: a compressed
/// file, or a directory that `ecf compress DIR` wrote. Its options are
/// those of burn-store's `SafetensorsStore`, with its defaults: validation
/// on, partial loads refused, no remapping, no filter, identity adapters.
pub struct EcfStore {
    path: PathBuf,
    filter: PathFilter,
    remapper: KeyRemapper,
    /// Why a remapping pattern given was refused, if one was.
    invalid_pattern: Option<String>,
    validate: bool,
    allow_partial: bool,
    skip_enum_variants: bool,
    overwrite: bool,
    from_adapter: Box<dyn ModuleAdapter>,
    to_adapter: Box<dyn ModuleAdapter>,
    /// Where float parameters on its device are decoded by the WGSL
    /// decoder.
    shared: Option<SharedDevice>,
    /// The checkpoint, opened on first use.
    opened: Option<Opened>,
    /// The parameters the last load decoded on the shared device.
    decoded_on_device: Vec<String>,
}

struct Opened {
    checkpoint: Arc<CompressedCheckpoint>,
    /// Its tensors, by their remapped names.
    tensors: BTreeMap<String, PackTensor>,
    /// Each remapped name's name in the checkpoint.
    sources: BTreeMap<String, String>,
}

impl EcfStore {
    /// The compressed file or checkpoint directory at `path`; nothing is
    /// read until the store is used.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        EcfStore {
            path: path.into(),
            filter: PathFilter::new(),
            remapper: KeyRemapper::new(),
            invalid_pattern: None,
            validate: true,
            allow_partial: false,
            skip_enum_variants: false,
            overwrite: false,
            from_adapter: Box::new(IdentityAdapter),
            to_adapter: Box::new(IdentityAdapter),
            shared: None,
            opened: None,
            decoded_on_device: Vec::new(),
        }
    }

    /// Decodes every float tensor loaded into a parameter on `shared`'s
    /// device with the WGSL decoder, straight into the parameter's buffer,
    /// where the `from` adapter does to it only what the device can do
    /// (nothing, a widening to F32, the transposition of a matrix made
    /// F32: `FloatCastAdapter`, `PyTorchToBurnAdapter`); any other tensor
    /// is decoded on the host, as without a shared device. The loaded bits
    /// are the same either way.
    pub fn on_shared_device(mut self, shared: &SharedDevice) -> Self {
        self.shared = Some(shared.clone());
        self
    }

    /// The parameters (by their paths in the module) the last load decoded
    /// on the shared device; the others it loaded were decoded on the host.
    pub fn decoded_on_device(&self) -> &[String] {
        &self.decoded_on_device
    }

    /// Loads or saves only the module paths `filter` matches.
    pub fn filter(mut self, filter: PathFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Adds a regular expression module paths are filtered by.
    pub fn with_regex(mut self, pattern: impl AsRef<str>) -> Self {
        self.filter = self.filter.with_regex(pattern);
        self
    }

    /// Adds a full module path to the filter.
    pub fn with_full_path(mut self, path: impl Into<String>) -> Self {
        self.filter = self.filter.with_full_path(path);
        self
    }

    /// Renames the checkpoint's tensors with `remapper` before they are
    /// matched to the module's paths.
    pub fn remap(mut self, remapper: KeyRemapper) -> Self {
        self.remapper = remapper;
        self.opened = None;
        self
    }

    /// Adds a remapping of tensor names: `from_pattern` (a regular
    /// expression) replaced by `to_pattern`. A pattern that is not a
    /// regular expression makes every later use of the store an error
    /// naming it (where `SafetensorsStore` panics).
    pub fn with_key_remapping(
        mut self,
        from_pattern: impl AsRef<str>,
        to_pattern: impl Into<String>,
    ) -> Self {
        let from_pattern = from_pattern.as_ref();
        match self.remapper.clone().add_pattern(from_pattern, to_pattern) {
            Ok(remapper) => self.remapper = remapper,
            Err(e) => {
                self.invalid_pattern
                    .get_or_insert_with(|| format!("key remapping {from_pattern:?}: {e}"));
            }
        }
        self.opened = None;
        self
    }

    /// The first remapping pattern that was not a regular expression, as
    /// an error.
    fn check_patterns(&self) -> Result<(), EcfStoreError> {
        match &self.invalid_pattern {
            Some(problem) => {
                Err(Error::Usage(format!("{}: {problem}", self.path.display())).into())
            }
            None => Ok(()),
        }
    }

    /// Whether tensors that could not be applied make the load an error
    /// (default), or are only reported in the [`ApplyResult`].
    pub fn validate(mut self, validate: bool) -> Self {
        self.validate = validate;
        self
    }

    /// Whether a load may leave module parameters the checkpoint lacks as
    /// they were (reported as missing) instead of failing (default).
    pub fn allow_partial(mut self, allow: bool) -> Self {
        self.allow_partial = allow;
        self
    }

    /// Leaves enum variant names out of module paths.
    pub fn skip_enum_variants(mut self, skip: bool) -> Self {
        self.skip_enum_variants = skip;
        self
    }

    /// Whether saving may replace an existing file.
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// The adapter tensors pass through when loaded, such as
    /// `PyTorchToBurnAdapter` or `FloatCastAdapter`.
    pub fn with_from_adapter(mut self, adapter: impl ModuleAdapter + 'static) -> Self {
        self.from_adapter = Box::new(adapter);
        self
    }

    /// The adapter tensors pass through when saved.
    pub fn with_to_adapter(mut self, adapter: impl ModuleAdapter + 'static) -> Self {
        self.to_adapter = Box::new(adapter);
        self
    }

    fn opened(&mut self) -> Result<&Opened, EcfStoreError> {
        self.check_patterns()?;
        if self.opened.is_none() {
            let checkpoint = Arc::new(CompressedCheckpoint::open(&self.path)?);
            let tensors = lazy_tensors(&checkpoint)?;
            let (remapped, names) = self.remapper.remap(tensors);
            self.opened = Some(Opened {
                checkpoint,
                tensors: remapped
                    .into_iter()
                    .map(|tensor| (tensor.name.clone(), tensor))
                    .collect(),
                sources: names.into_iter().collect(),
            });
        }
        match &self.opened {
            Some(opened) => Ok(opened),
            None => unreachable!("opened above"),
        }
    }

    fn tensors(&mut self) -> Result<&BTreeMap<String, PackTensor>, EcfStoreError> {
        Ok(&self.opened()?.tensors)
    }
}

impl ModuleStore for EcfStore {
    type Error = EcfStoreError;

    /// Writes the module's tensors compressed: through the `to` adapter,
    /// filtered and remapped, into a plain safetensors file beside the
    /// destination, then compressed with the default options (which
    /// replace the destination only once it is whole); the plain file is
    /// removed whatever happens.
    fn collect_from<M: ModuleSnapshot>(&mut self, module: &M) -> Result<(), Self::Error> {
        self.check_patterns()?;
        self.opened = None;
        let filter = (!self.filter.is_empty()).then(|| self.filter.clone());
        let tensors = module.collect(
            filter,
            Some(self.to_adapter.clone_box()),
            self.skip_enum_variants,
        );
        let (tensors, _) = self.remapper.remap(tensors);
        let path = &self.path;
        if !self.overwrite && std::fs::symlink_metadata(path).is_ok() {
            return Err(Error::Usage(format!(
                "{}: the file exists (allow replacing it with `overwrite(true)`)",
                path.display()
            ))
            .into());
        }
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let plain = tempfile::Builder::new()
            .prefix(".ecfloat-plain-")
            .suffix(".safetensors")
            .tempfile_in(directory)
            .map_err(|e| Error::io(directory, e))?;
        let mut views = Vec::with_capacity(tensors.len());
        for tensor in tensors {
            let name = tensor.name.clone();
            let view = PlainTensor::new(path, &name, tensor)?;
            views.push((name, view));
        }
        safetensors::serialize_to_file(views, None, plain.path())
            .map_err(|e| Error::Usage(format!("{}: {e}", plain.path().display())))?;
        let options = CompressOptions {
            force: self.overwrite,
            ..Default::default()
        };
        compress_file(plain.path(), path, &options)?;
        Ok(())
    }

    fn apply_to<M: ModuleSnapshot>(&mut self, module: &mut M) -> Result<ApplyResult, Self::Error> {
        let filter = (!self.filter.is_empty()).then(|| self.filter.clone());
        let adapter = Some(self.from_adapter.clone_box());
        let skip_enum_variants = self.skip_enum_variants;
        let shared = self.shared.clone();
        self.decoded_on_device.clear();
        let opened = self.opened()?;
        let result = match &shared {
            Some(shared) => {
                let mut applier = apply::DeviceApplier::new(
                    shared,
                    &opened.checkpoint,
                    &opened.tensors,
                    &opened.sources,
                    filter,
                    adapter,
                    skip_enum_variants,
                );
                // A module's clone shares its tensors: only the loaded ones
                // are new.
                *module = module.clone().map(&mut applier);
                let (result, decoded) = applier.into_result();
                self.decoded_on_device = decoded;
                result
            }
            None => {
                let tensors: Vec<PackTensor> = opened.tensors.values().cloned().collect();
                module.apply(tensors, filter, adapter, skip_enum_variants)
            }
        };
        if self.validate && !result.errors.is_empty() {
            let errors: Vec<String> = result.errors.iter().map(ToString::to_string).collect();
            return Err(EcfStoreError::ValidationFailed(format!(
                "{}: {}",
                self.path.display(),
                errors.join("; ")
            )));
        }
        if !self.allow_partial && !result.missing.is_empty() {
            return Err(EcfStoreError::TensorNotFound(format!(
                "{}:\n{result}\n\nHint: `.allow_partial(true)` on the store gives the \
                 `ApplyResult` with what is missing instead of this error.",
                self.path.display()
            )));
        }
        Ok(result)
    }

    fn get_tensor(&mut self, name: &str) -> Result<Option<&PackTensor>, Self::Error> {
        Ok(self.tensors()?.get(name))
    }

    fn get_all_tensors(&mut self) -> Result<&BTreeMap<String, PackTensor>, Self::Error> {
        self.tensors()
    }

    fn keys(&mut self) -> Result<Vec<String>, Self::Error> {
        Ok(self.tensors()?.keys().cloned().collect())
    }
}

/// Every tensor of `checkpoint`, under its own name, its bytes decoded on
/// the CPU when asked for.
fn lazy_tensors(checkpoint: &Arc<CompressedCheckpoint>) -> Result<Vec<PackTensor>, EcfStoreError> {
    let mut tensors = Vec::new();
    for (file, stored) in checkpoint.tensors() {
        let source = &stored.source;
        let name = source.name.clone();
        let dtype = burn_dtype(source.dtype).ok_or_else(|| {
            Error::corrupt(
                file.path(),
                Some(&name),
                format!("burn has no {:?} dtype to load it as", source.dtype),
            )
        })?;
        let len = source.len();
        let checkpoint = checkpoint.clone();
        let decoded_name = name.clone();
        tensors.push(PackTensor::deferred(
            name,
            dtype,
            source.shape.clone(),
            None,
            len,
            move || decode(&checkpoint, &decoded_name),
        ));
    }
    Ok(tensors)
}

/// Tensor `name`'s original bytes, decoded and checked.
fn decode(checkpoint: &CompressedCheckpoint, name: &str) -> Result<Bytes, PackError> {
    let (file, tensor) = checkpoint
        .get(name)
        .ok_or_else(|| PackError::TensorNotFound(name.to_string()))?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(tensor.source.len()).map_err(|_| {
        PackError::ValidationError(format!(
            "{}: tensor {name}: cannot allocate its {} bytes",
            file.path().display(),
            tensor.source.len()
        ))
    })?;
    bytes.resize(tensor.source.len(), 0);
    let decoder = cpu_decoder();
    file.read_tensor_into(tensor, &decoder, &mut bytes)
        .map_err(|e| PackError::ValidationError(e.to_string()))?;
    Ok(Bytes::from_bytes_vec(bytes))
}

/// The burn dtype of a safetensors dtype, as burn-store's safetensors
/// loading maps it; `None` for those it refuses (the F8 formats among
/// them).
fn burn_dtype(dtype: safetensors::Dtype) -> Option<DType> {
    use ::burn::tensor::BoolStore;
    use safetensors::Dtype;
    Some(match dtype {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U64 => DType::U64,
        Dtype::U32 => DType::U32,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool(BoolStore::Native),
        _ => return None,
    })
}

/// The safetensors dtype a burn tensor is saved as, as burn-store's
/// safetensors saving writes it.
fn safetensors_dtype(dtype: DType) -> Option<safetensors::Dtype> {
    use ::burn::tensor::BoolStore;
    use safetensors::Dtype;
    Some(match dtype {
        DType::F64 => Dtype::F64,
        DType::F32 | DType::Flex32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U64 => Dtype::U64,
        DType::U32 | DType::Bool(BoolStore::U32) => Dtype::U32,
        DType::U16 => Dtype::U16,
        DType::U8 | DType::Bool(BoolStore::U8) => Dtype::U8,
        DType::Bool(BoolStore::Native) => Dtype::BOOL,
        DType::QFloat(_) => return None,
    })
}

/// A module's tensor, read back, as safetensors writes it.
struct PlainTensor {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Bytes,
}

impl PlainTensor {
    fn new(path: &Path, name: &str, tensor: PackTensor) -> Result<Self, Error> {
        let dtype = safetensors_dtype(tensor.dtype).ok_or_else(|| {
            Error::Usage(format!(
                "{}: tensor {name}: a {:?} tensor has no safetensors dtype to be saved as",
                path.display(),
                tensor.dtype
            ))
        })?;
        let shape = tensor.shape.to_vec();
        let bytes = tensor
            .into_bytes()
            .map_err(|e| Error::Usage(format!("{}: tensor {name}: {e}", path.display())))?;
        Ok(PlainTensor {
            dtype,
            shape,
            bytes,
        })
    }
}

impl safetensors::View for PlainTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The `[columns, rows]` transpose of `[rows, columns]` values, the one at
/// flat index `i` being `value(i)`: what `PyTorchToBurnAdapter` does to a
/// linear layer's weight.
fn transposed<T>(value: impl Fn(usize) -> T, [rows, columns]: [usize; 2]) -> Vec<T> {
    let value = &value;
    (0..columns)
        .flat_map(|column| (0..rows).map(move |row| value(row * columns + column)))
        .collect()
}
