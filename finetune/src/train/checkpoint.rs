//! Checkpoints: the adapter (PEFT layout), the optimizer's moments and the trainer's state, in
//! `OUTPUT/checkpoint-STEP/`. A checkpoint is written into a temporary folder and renamed
//! into place once complete, so a crash at any point leaves the previous one intact; older
//! ones are removed after.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::lm::config::ModelConfig;
use crate::lm::lora::Adapter;
use crate::train::TrainConfig;
use crate::train::history::Record;
use crate::{Error, Result};

const STATE: &str = "trainer_state.json";
const OPTIMIZER: &str = "optimizer.safetensors";

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    pub config: TrainConfig,
    pub history: Vec<Record>,
    pub tokens: usize,
    pub elapsed_s: f64,
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Loaded {
    pub state: TrainerState,
    pub adapter: Adapter,
    pub optimizer: HashMap<String, Tensor>,
    pub dir: PathBuf,
}

/// Checkpoint folders in `output`, oldest first.
pub fn list(output: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(output)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
                    e.path().join(STATE).is_file().then(|| (step, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Writes a checkpoint and removes the ones before it; returns its folder.
pub fn save(
    output: &Path,
    state: &TrainerState,
    adapter: &Adapter,
    optimizer: &HashMap<String, Tensor>,
    model: &ModelConfig,
) -> Result<PathBuf> {
    let dir = output.join(format!("checkpoint-{}", state.step));
    let tmp = output.join(format!(".checkpoint-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    adapter.save_peft(&tmp, model)?;
    let moments: HashMap<String, Tensor> = optimizer
        .iter()
        .map(|(k, v)| (k.clone(), v.detach()))
        .collect();
    candle_core::safetensors::save(&moments, tmp.join(OPTIMIZER))?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::Request(format!("trainer state: {e}")))?;
    // The state is written last: a folder with it is complete.
    std::fs::write(tmp.join(STATE), json).map_err(|e| Error::io(&tmp, e))?;
    // Everything on disk before the folder is renamed into place: a checkpoint that exists
    // after a power loss is whole.
    for entry in std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
        crate::fs::sync_path(&entry.map_err(|e| Error::io(&tmp, e))?.path())?;
    }
    crate::fs::sync_path(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    crate::fs::sync_parent(&dir)?;
    for (step, old) in list(output) {
        if step != state.step {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
    }
    Ok(dir)
}

/// The newest complete checkpoint in `output`, if any.
pub fn load_latest(output: &Path, model: &ModelConfig) -> Result<Option<Loaded>> {
    let Some((_, dir)) = list(output).pop() else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(dir.join(STATE)).map_err(|e| Error::io(&dir, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::Request(format!("{}: {e}", dir.join(STATE).display())))?;
    let adapter = Adapter::load_peft(&dir, model)?;
    let optimizer = candle_core::safetensors::load(dir.join(OPTIMIZER), &Device::Cpu)?;
    Ok(Some(Loaded {
        state,
        adapter,
        optimizer,
        dir,
    }))
}
