//! What a GGUF file holds: architecture, context, and how many tensors (and bytes) of each
//! block type. `cargo run --release -p lore-finetune --example gguf_info -- MODEL.gguf`

use std::collections::BTreeMap;

use candle_core::quantized::gguf_file;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: gguf_info MODEL.gguf"))?;
    let mut file = std::fs::File::open(&path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    println!("architecture: {arch}");
    let mut types: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for info in content.tensor_infos.values() {
        let elems = info.shape.elem_count();
        let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let entry = types.entry(format!("{:?}", info.ggml_dtype)).or_default();
        entry.0 += 1;
        entry.1 += bytes;
    }
    for (dtype, (count, bytes)) in types {
        println!(
            "{dtype:>6}: {count:>4} tensors, {:.1} MB",
            bytes as f64 / 1e6
        );
    }
    Ok(())
}
