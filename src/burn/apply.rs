//! Loading onto a [`SharedDevice`]: each float parameter on the shared
//! device is decoded by the WGSL decoder straight into its burn tensor's
//! buffer; everything else goes to burn-store's own applier, whose report
//! this one's is merged into.
//!
//! The `from` adapter still decides what a tensor becomes. What it does to
//! a tensor's data is learnt from a probe: a small tensor of the same name,
//! dtype and rank, in the same module, through the same adapter. Three
//! effects are carried out on the device: none, a widening to F32 (as
//! `FloatCastAdapter` converts), and the transposition of a matrix made F32
//! (as `PyTorchToBurnAdapter` lays out a linear weight). A tensor the
//! adapter treats in any other way, or that the device cannot hold, is
//! decoded on the host and handed to burn-store's applier, as without a
//! shared device.

use std::collections::{BTreeMap, HashSet};

use ::burn::module::{ModuleMapper, Param};
use ::burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{
    Applier, ApplyError, ApplyResult, ModuleAdapter, ModuleContext, PathFilter, bridge,
};

use super::SharedDevice;
use crate::container::CompressedCheckpoint;

/// burn-store's applier, with the float parameters on the shared device
/// taken over.
pub(super) struct DeviceApplier<'a> {
    inner: Applier,
    shared: &'a SharedDevice,
    checkpoint: &'a CompressedCheckpoint,
    /// The store's tensors by their remapped name, and the name each has
    /// in the checkpoint.
    tensors: &'a BTreeMap<String, PackTensor>,
    sources: &'a BTreeMap<String, String>,
    filter: Option<PathFilter>,
    adapter: Option<Box<dyn ModuleAdapter>>,
    path: Vec<String>,
    containers: Vec<String>,
    skip_enum_variants: bool,
    /// Every parameter path visited, in order.
    visited: Vec<String>,
    /// What this applier loaded itself: parameter paths, and the store's
    /// names they came from.
    applied: HashSet<String>,
    consumed: HashSet<String>,
    errors: Vec<ApplyError>,
}

/// What an adapter does to a tensor's data, on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Effect {
    dtype: DType,
    transpose: bool,
}

impl<'a> DeviceApplier<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        shared: &'a SharedDevice,
        checkpoint: &'a CompressedCheckpoint,
        tensors: &'a BTreeMap<String, PackTensor>,
        sources: &'a BTreeMap<String, String>,
        filter: Option<PathFilter>,
        adapter: Option<Box<dyn ModuleAdapter>>,
        skip_enum_variants: bool,
    ) -> Self {
        DeviceApplier {
            inner: Applier::new(
                tensors.values().cloned().collect(),
                filter.clone(),
                adapter.as_ref().map(|adapter| adapter.clone_box()),
                skip_enum_variants,
            ),
            shared,
            checkpoint,
            tensors,
            sources,
            filter,
            adapter,
            path: Vec::new(),
            containers: Vec::new(),
            skip_enum_variants,
            visited: Vec::new(),
            applied: HashSet::new(),
            consumed: HashSet::new(),
            errors: Vec::new(),
        }
    }

    /// burn-store's report, with what this applier loaded itself merged in,
    /// and the paths it loaded itself, in order.
    pub(super) fn into_result(self) -> (ApplyResult, Vec<String>) {
        let mut result = self.inner.into_result();
        let theirs: HashSet<String> = result.applied.drain(..).collect();
        let ours: Vec<String> = self
            .visited
            .iter()
            .filter(|path| self.applied.contains(*path))
            .cloned()
            .collect();
        result.applied = self
            .visited
            .into_iter()
            .filter(|path| theirs.contains(path) || self.applied.contains(path))
            .collect();
        result.unused.retain(|name| !self.consumed.contains(name));
        result.errors.extend(self.errors);
        (result, ours)
    }

    /// The store's name of the tensor for the parameter at the current
    /// path, as burn-store's applier finds it: the path, or the adapter's
    /// alternative name for the parameter.
    fn source_name(&self) -> Option<String> {
        let path = self.path.join(".");
        if self.tensors.contains_key(&path) {
            return Some(path);
        }
        let adapter = self.adapter.as_ref()?;
        let module_type = ModuleContext::new(&self.containers).module_type()?;
        let alternative = adapter.get_alternative_param_name(self.path.last()?, module_type)?;
        let mut path = self.path.clone();
        *path.last_mut()? = alternative;
        let path = path.join(".");
        self.tensors.contains_key(&path).then_some(path)
    }

    /// What the adapter does to a `dtype` tensor of `rank` dimensions at
    /// the current path, where it is something the device can do.
    fn effect(&self, dtype: DType, rank: usize) -> Option<Effect> {
        let Some(adapter) = &self.adapter else {
            return Some(Effect {
                dtype,
                transpose: false,
            });
        };
        // Distinct small integers: exact in every float dtype, and a
        // transposition moves them.
        let shape: Vec<usize> = (2..2 + rank).collect();
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (1..=count).map(|i| i as f32).collect();
        let probe = TensorData::new(values.clone(), shape.clone()).convert_dtype(dtype);
        let probe = bridge::from_data(probe, self.path.join("."), None);
        let adapted = adapter.adapt(probe, ModuleContext::new(&self.containers));
        let adapted = bridge::into_data(adapted).ok()?;
        let adapted_dtype = adapted.dtype();
        if adapted_dtype != dtype && adapted_dtype != DType::F32 {
            return None;
        }
        let adapted_shape = adapted.shape().to_vec();
        let adapted_values = adapted.convert_dtype(DType::F32).try_to_vec::<f32>().ok()?;
        if adapted_shape == shape && adapted_values == values {
            return Some(Effect {
                dtype: adapted_dtype,
                transpose: false,
            });
        }
        if let [rows, columns] = shape[..]
            && adapted_dtype == DType::F32
            && adapted_shape == [columns, rows]
            && adapted_values == super::transposed(|i| values[i], [rows, columns])
        {
            return Some(Effect {
                dtype: DType::F32,
                transpose: true,
            });
        }
        None
    }

    /// The parameter at the current path decoded on the shared device, or
    /// `None` where burn-store's applier is to load it.
    fn decode<const D: usize>(&mut self, param: &Param<Tensor<D>>) -> Option<Tensor<D>> {
        if param.lazy_device() != *self.shared.device() {
            return None;
        }
        let filtered_out = self.filter.as_ref().is_some_and(|filter| {
            !filter.matches_with_container_path(&self.path, &self.containers)
        });
        if filtered_out {
            return None;
        }
        let name = self.source_name()?;
        let source = self.tensors.get(&name)?;
        if !source.dtype.is_float() {
            return None;
        }
        let effect = self.effect(source.dtype, source.shape.len())?;
        let mut shape = source.shape.to_vec();
        if effect.transpose {
            shape.reverse();
        }
        if shape != param.lazy_shape().to_vec()
            || !self.shared.device().supports_dtype(effect.dtype)
        {
            return None;
        }
        let (file, stored) = self.checkpoint.get(self.sources.get(&name)?)?;
        let path = self.path.join(".");
        self.consumed.insert(name);
        match self
            .shared
            .decode_stored(file, stored, effect.dtype, effect.transpose)
        {
            Ok(tensor) => {
                self.applied.insert(path);
                Some(tensor)
            }
            Err(e) => {
                self.errors.push(ApplyError::LoadError {
                    path,
                    message: e.in_tensor(file.path(), &stored.source.name).to_string(),
                });
                None
            }
        }
    }
}

impl ModuleMapper for DeviceApplier<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.inner.enter_module(name, container_type);
        self.containers.push(container_type.to_string());
        if !self.skip_enum_variants || !container_type.starts_with("Enum:") {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, name: &str, container_type: &str) {
        self.inner.exit_module(name, container_type);
        self.containers.pop();
        if !self.skip_enum_variants || !container_type.starts_with("Enum:") {
            self.path.pop();
        }
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.visited.push(self.path.join("."));
        let consumed = self.consumed.len();
        match self.decode(&param) {
            Some(tensor) => {
                let id = param.id;
                param.transform_for_load(tensor, id)
            }
            // A decode that failed has its error; one not tried is burn-store's.
            None if self.consumed.len() > consumed => param,
            None => self.inner.map_float(param),
        }
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        self.visited.push(self.path.join("."));
        self.inner.map_int(param)
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        self.visited.push(self.path.join("."));
        self.inner.map_bool(param)
    }
}
