//! What a user sets about decoding, and the compact output head kept across decode batches.

pub use medify_quant::HeadPrecision;

/// Settings of the host decode path ([`crate::CausalLm::set_decode_options`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeOptions {
    /// How the output head is held: exact (the default), or bf16 / int8 to read fewer bytes
    /// per token (see [`HeadPrecision`] for the error each allows).
    pub head: HeadPrecision,
}

/// A compact copy of a model's output head with the weight it was made from, so decode
/// batches share one copy while the head stays the same weight.
#[cfg(feature = "flex")]
#[derive(Debug, Clone, Default)]
pub(crate) struct CompactHeadCache(std::sync::Arc<std::sync::Mutex<Option<CompactHead>>>);

#[cfg(feature = "flex")]
#[derive(Debug)]
struct CompactHead {
    source: medify_quant::DecodeWeight,
    precision: HeadPrecision,
    compact: medify_quant::DecodeWeight,
}

/// Without Flex there is no host decoder and nothing to keep.
#[cfg(not(feature = "flex"))]
#[derive(Debug, Clone, Default)]
pub(crate) struct CompactHeadCache;

#[cfg(feature = "flex")]
impl CompactHeadCache {
    /// `head` held at `precision`: made once, then reused while `head` is the same weight.
    pub(crate) fn get(
        &self,
        head: &medify_quant::DecodeWeight,
        precision: HeadPrecision,
    ) -> crate::Result<medify_quant::DecodeWeight> {
        if precision == HeadPrecision::Exact {
            return Ok(head.clone());
        }
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = slot.as_ref()
            && c.precision == precision
            && c.source.shares_storage(head)
        {
            return Ok(c.compact.clone());
        }
        let compact = medify_quant::DecodeWeight::compact(head, precision).map_err(|e| {
            crate::ModelError::InvalidRequest(format!("compacting the output head: {e}"))
        })?;
        *slot = Some(CompactHead {
            source: head.clone(),
            precision,
            compact: compact.clone(),
        });
        Ok(compact)
    }
}
