//! `LoraConfig`: the knobs of an adapter, read and written as PEFT's `adapter_config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::config::Config;
use regex::Regex;
use serde_json::{Map, Value, json};

// Not `Result`: burn's `Config` derive expands to code that names `Result` unqualified.
use crate::error::{LoraError, Result as LoraResult, io_err};

/// Which linear layers get an adapter, with PEFT's matching rules.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// Module names or full paths: a layer matches when its path equals an entry or ends with
    /// `"." + entry` (`"q_proj"` matches `model.layers.0.self_attn.q_proj`).
    Names(Vec<String>),
    /// A regular expression that must match the whole module path.
    Regex(String),
    /// Every linear layer except the output layer (`lm_head`), as QLoRA does.
    AllLinear,
}

impl TargetModules {
    /// Targets from a list of names.
    pub fn names<S: AsRef<str>>(names: &[S]) -> TargetModules {
        TargetModules::Names(names.iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// The four attention projections, the classic LoRA choice.
    pub fn attention() -> TargetModules {
        TargetModules::names(&["q_proj", "k_proj", "v_proj", "o_proj"])
    }

    /// PEFT's JSON form: `"all-linear"`, a list of names, or any other string as a regular
    /// expression over the whole module path.
    pub fn to_json(&self) -> Value {
        match self {
            TargetModules::Names(n) => json!(n),
            TargetModules::Regex(r) => json!(r),
            TargetModules::AllLinear => json!("all-linear"),
        }
    }

    /// Reads PEFT's JSON form (see [`TargetModules::to_json`]); the error says what is wrong.
    pub fn from_json(value: &Value) -> std::result::Result<TargetModules, String> {
        match value {
            Value::String(s) if s.eq_ignore_ascii_case("all-linear") => {
                Ok(TargetModules::AllLinear)
            }
            Value::String(s) => Ok(TargetModules::Regex(s.clone())),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("must hold strings, got {v}"))
                })
                .collect::<std::result::Result<_, _>>()
                .map(TargetModules::Names),
            v => Err(format!("must be a list or a string, got {v}")),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            TargetModules::Names(n) => format!("{n:?}"),
            TargetModules::Regex(r) => format!("regex {r:?}"),
            TargetModules::AllLinear => "\"all-linear\"".into(),
        }
    }
}

/// `all-linear`, or comma-separated module names (`q_proj,v_proj`): the command-line form.
///
/// ```
/// use medify_lora::TargetModules;
/// assert_eq!("all-linear".parse::<TargetModules>().unwrap(), TargetModules::AllLinear);
/// assert_eq!("q_proj, v_proj".parse::<TargetModules>().unwrap(),
///     TargetModules::names(&["q_proj", "v_proj"]));
/// assert!(" , ".parse::<TargetModules>().is_err());
/// ```
impl std::str::FromStr for TargetModules {
    type Err = LoraError;

    fn from_str(s: &str) -> LoraResult<TargetModules> {
        if s.trim().eq_ignore_ascii_case("all-linear") {
            return Ok(TargetModules::AllLinear);
        }
        let names: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Err(LoraError::InvalidConfig(format!(
                "target modules {s:?} name no module (all-linear, or names such as q_proj,v_proj)"
            )));
        }
        Ok(TargetModules::names(&names))
    }
}

impl serde::Serialize for TargetModules {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.to_json(), serializer)
    }
}

impl<'de> serde::Deserialize<'de> for TargetModules {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        TargetModules::from_json(&value).map_err(serde::de::Error::custom)
    }
}

/// How adapter factors start.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LoraInit {
    /// PEFT's default (`init_lora_weights: true`): A ~ U(±1/√in) (kaiming-uniform, a = √5), B = 0,
    /// so the adapted model starts equal to the base.
    KaimingUniform,
    /// `"gaussian"`: A ~ N(0, (1/r)²), B = 0.
    Gaussian,
    /// `init_lora_weights: false`: both A and B random (kaiming-uniform), for tests that need a
    /// non-zero adapter.
    Random,
    /// Another PEFT initialisation name (PiSSA, LoftQ…): fine for loading saved weights, but
    /// this crate cannot initialise it.
    Other(String),
}

/// The configuration of a LoRA adapter.
///
/// Defaults follow PEFT (`r = 8`, `alpha = 8`, no dropout, attention projections);
/// [`LoraConfig::qlora`] gives the QLoRA paper's recipe. `LoraConfig::new(r, alpha)` and the
/// `with_*` builders come from burn's `Config` derive; [`LoraConfig::to_peft_json`] and
/// [`LoraConfig::from_peft_json`] read and write PEFT's `adapter_config.json`.
///
/// ```
/// use medify_lora::{LoraConfig, TargetModules};
/// let config = LoraConfig { r: 16, ..LoraConfig::qlora() }.with_use_rslora(true);
/// assert_eq!(config.target_modules, TargetModules::AllLinear);
/// assert_eq!(config.scaling_for(16, 16.0), 4.0); // alpha / sqrt(r)
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank of the update.
    pub r: usize,
    /// `lora_alpha`: the update is scaled by `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Which layers to adapt.
    #[config(default = "TargetModules::attention()")]
    pub target_modules: TargetModules,
    /// Rank-stabilised scaling `alpha / sqrt(r)`.
    #[config(default = false)]
    pub use_rslora: bool,
    /// Weight-decomposed LoRA (a learned per-row magnitude).
    #[config(default = false)]
    pub use_dora: bool,
    /// Initialisation of the factors.
    #[config(default = "LoraInit::KaimingUniform")]
    pub init: LoraInit,
    /// Only adapt these layer indices (PEFT's `layers_to_transform`; applies to name targets).
    pub layers_to_transform: Option<Vec<usize>>,
    /// Per-module rank overrides, keyed by a name or regex suffix (PEFT's `rank_pattern`).
    #[config(default = "BTreeMap::new()")]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides (PEFT's `alpha_pattern`).
    #[config(default = "BTreeMap::new()")]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Seed of the factor initialisation.
    #[config(default = 0)]
    pub seed: u64,
    /// Written to `base_model_name_or_path` so PEFT knows which base the adapter belongs to.
    pub base_model_name_or_path: Option<String>,
}

impl Default for LoraConfig {
    /// PEFT's defaults: r = 8, alpha = 8.
    fn default() -> Self {
        LoraConfig::new(8, 8.0)
    }
}

impl LoraConfig {
    /// The QLoRA paper's adapter: r = 64, alpha = 16, dropout 0.05, all linear layers.
    pub fn qlora() -> LoraConfig {
        LoraConfig {
            r: 64,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: TargetModules::AllLinear,
            ..LoraConfig::default()
        }
    }

    /// The factor the update is multiplied by for rank `r` and `alpha`.
    pub fn scaling_for(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// Checks the values that make no sense whatever the model.
    pub fn validate(&self) -> LoraResult<()> {
        if self.r == 0 || self.rank_pattern.values().any(|&r| r == 0) {
            return Err(LoraError::InvalidConfig(
                "r must be at least 1 (r = 0 adapts nothing)".into(),
            ));
        }
        if !self.alpha.is_finite() || self.alpha_pattern.values().any(|a| !a.is_finite()) {
            return Err(LoraError::InvalidConfig("lora_alpha must be finite".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::InvalidConfig(format!(
                "lora_dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if let TargetModules::Names(n) = &self.target_modules
            && n.is_empty()
        {
            return Err(LoraError::InvalidConfig("target_modules is empty".into()));
        }
        if let TargetModules::Regex(r) = &self.target_modules {
            full_regex(r)?;
        }
        for p in self.rank_pattern.keys().chain(self.alpha_pattern.keys()) {
            suffix_regex(p)?;
        }
        Ok(())
    }

    /// Whether the module at `path` gets an adapter. `output_layer` is excluded by `AllLinear`.
    pub fn targets(&self, path: &str, output_layer: Option<&str>) -> LoraResult<bool> {
        let found = match &self.target_modules {
            TargetModules::AllLinear => return Ok(Some(path) != output_layer),
            TargetModules::Regex(r) => return Ok(full_regex(r)?.is_match(path)),
            TargetModules::Names(names) => {
                if names.iter().any(|n| n == path) {
                    return Ok(true);
                }
                names.iter().any(|n| path.ends_with(&format!(".{n}")))
            }
        };
        match &self.layers_to_transform {
            Some(layers) if found && !layers.is_empty() => {
                Ok(layer_index(path).is_some_and(|i| layers.contains(&i)))
            }
            _ => Ok(found),
        }
    }

    /// Rank and alpha for the module at `path`, after `rank_pattern` / `alpha_pattern`.
    pub fn rank_and_alpha(&self, path: &str) -> LoraResult<(usize, f64)> {
        let mut r = self.r;
        for (p, &v) in &self.rank_pattern {
            if suffix_regex(p)?.is_match(path) {
                r = v;
                break;
            }
        }
        let mut alpha = self.alpha;
        for (p, &v) in &self.alpha_pattern {
            if suffix_regex(p)?.is_match(path) {
                alpha = v;
                break;
            }
        }
        Ok((r, alpha))
    }

    /// PEFT's `adapter_config.json` for this adapter. `adapted` are the module paths that got an
    /// adapter; `"all-linear"` is written as their names, as PEFT does.
    pub fn to_peft_json(&self, adapted: &[String]) -> Value {
        let target = match &self.target_modules {
            TargetModules::Names(_) | TargetModules::Regex(_) => self.target_modules.to_json(),
            TargetModules::AllLinear => {
                let mut names: Vec<&str> = adapted
                    .iter()
                    .map(|p| p.rsplit('.').next().unwrap_or(p))
                    .collect();
                names.sort_unstable();
                names.dedup();
                json!(names)
            }
        };
        let init = match &self.init {
            LoraInit::KaimingUniform => json!(true),
            LoraInit::Random => json!(false),
            LoraInit::Gaussian => json!("gaussian"),
            LoraInit::Other(s) => json!(s),
        };
        json!({
            "alpha_pattern": self.alpha_pattern.iter().map(|(k, &v)| (k.clone(), number(v))).collect::<Map<_, _>>(),
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": init,
            "layers_pattern": null,
            "layers_to_transform": self.layers_to_transform,
            "lora_alpha": number(self.alpha),
            "lora_dropout": self.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": self.rank_pattern,
            "revision": null,
            "target_modules": target,
            "task_type": "CAUSAL_LM",
            "use_dora": self.use_dora,
            "use_rslora": self.use_rslora,
        })
    }

    /// Reads PEFT's `adapter_config.json`. Settings this crate cannot honour (bias training,
    /// `modules_to_save`, fan-in-fan-out layers, other PEFT methods) are errors naming the field.
    pub fn from_peft_json(value: &Value, path: &Path) -> LoraResult<LoraConfig> {
        let bad = |message: String| LoraError::Format {
            path: path.to_path_buf(),
            message,
        };
        let obj = value
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;
        let peft_type = obj
            .get("peft_type")
            .and_then(Value::as_str)
            .unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(LoraError::Unsupported(format!(
                "{}: peft_type {peft_type:?}; only LORA adapters are supported",
                path.display()
            )));
        }
        let unsupported = |field: &str, why: &str| {
            LoraError::Unsupported(format!("{}: field `{field}`: {why}", path.display()))
        };
        match obj.get("bias").and_then(Value::as_str) {
            None | Some("none") => {}
            Some(b) => return Err(unsupported("bias", &format!("{b:?} (only \"none\")"))),
        }
        if obj.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(
                "fan_in_fan_out",
                "Conv1D layers are not used by this model zoo",
            ));
        }
        if let Some(m) = obj.get("modules_to_save").filter(|v| !is_empty(v)) {
            return Err(unsupported(
                "modules_to_save",
                &format!("{m} (fully trained modules)"),
            ));
        }
        if let Some(m) = obj.get("exclude_modules").filter(|v| !is_empty(v)) {
            return Err(unsupported("exclude_modules", &m.to_string()));
        }
        for field in [
            "layers_pattern",
            "layer_replication",
            "trainable_token_indices",
            "target_parameters",
            "alora_invocation_tokens",
        ] {
            if let Some(m) = obj.get(field).filter(|v| !is_empty(v)) {
                return Err(unsupported(field, &m.to_string()));
            }
        }
        for field in ["lora_bias", "use_qalora", "use_bdlora"] {
            if obj.get(field).and_then(Value::as_bool) == Some(true) {
                return Err(unsupported(
                    field,
                    "true (a LoRA variant this crate does not implement)",
                ));
            }
        }
        let field_usize = |name: &str| -> LoraResult<Option<usize>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                    bad(format!(
                        "field `{name}` must be a non-negative integer, got {v}"
                    ))
                }),
            }
        };
        let field_f64 = |name: &str| -> LoraResult<Option<f64>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("field `{name}` must be a number, got {v}"))),
            }
        };
        let field_bool = |name: &str| -> LoraResult<bool> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(false),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad(format!("field `{name}` must be true or false, got {v}"))),
            }
        };
        let r = field_usize("r")?.unwrap_or(8);
        let alpha = field_f64("lora_alpha")?.unwrap_or(8.0);
        let target_modules = match obj.get("target_modules") {
            None | Some(Value::Null) => {
                return Err(bad("field `target_modules` is missing".into()));
            }
            Some(v) => TargetModules::from_json(v)
                .map_err(|e| bad(format!("field `target_modules` {e}")))?,
        };
        let init = match obj.get("init_lora_weights") {
            None | Some(Value::Null) | Some(Value::Bool(true)) => LoraInit::KaimingUniform,
            Some(Value::Bool(false)) => LoraInit::Random,
            Some(Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
            Some(Value::String(s)) => LoraInit::Other(s.clone()),
            Some(v) => {
                return Err(bad(format!(
                    "field `init_lora_weights` must be a bool or a string, got {v}"
                )));
            }
        };
        let layers_to_transform =
            match obj.get("layers_to_transform") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(vec![n.as_u64().ok_or_else(|| {
                    bad("field `layers_to_transform` must be a layer index".into())
                })? as usize]),
                Some(Value::Array(items)) => Some(
                    items
                        .iter()
                        .map(|v| {
                            v.as_u64().map(|n| n as usize).ok_or_else(|| {
                                bad(format!(
                                    "field `layers_to_transform` must hold layer indices, got {v}"
                                ))
                            })
                        })
                        .collect::<LoraResult<_>>()?,
                ),
                Some(v) => {
                    return Err(bad(format!(
                        "field `layers_to_transform` must be a list of indices, got {v}"
                    )));
                }
            };
        let pattern = |name: &str| -> LoraResult<BTreeMap<String, f64>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(BTreeMap::new()),
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(k, v)| {
                        v.as_f64().map(|x| (k.clone(), x)).ok_or_else(|| {
                            bad(format!(
                                "field `{name}`: value of {k:?} must be a number, got {v}"
                            ))
                        })
                    })
                    .collect(),
                Some(v) => Err(bad(format!("field `{name}` must be an object, got {v}"))),
            }
        };
        let rank_pattern = pattern("rank_pattern")?
            .into_iter()
            .map(|(k, v)| {
                if v >= 0.0 && v.fract() == 0.0 {
                    Ok((k, v as usize))
                } else {
                    Err(bad(format!(
                        "field `rank_pattern`: rank of {k:?} must be an integer, got {v}"
                    )))
                }
            })
            .collect::<LoraResult<_>>()?;
        let config = LoraConfig {
            r,
            alpha,
            dropout: field_f64("lora_dropout")?.unwrap_or(0.0),
            target_modules,
            use_rslora: field_bool("use_rslora")?,
            use_dora: field_bool("use_dora")?,
            init,
            layers_to_transform,
            rank_pattern,
            alpha_pattern: pattern("alpha_pattern")?,
            seed: 0,
            base_model_name_or_path: obj
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        config.validate().map_err(|e| bad(e.to_string()))?;
        Ok(config)
    }

    /// Reads `adapter_config.json` from a file.
    pub fn from_file(path: impl AsRef<Path>) -> LoraResult<LoraConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| LoraError::Format {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        LoraConfig::from_peft_json(&value, path)
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Integral alphas are written as integers, as PEFT users write them.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn full_regex(pattern: &str) -> LoraResult<Regex> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| LoraError::InvalidConfig(format!("target_modules regex {pattern:?}: {e}")))
}

fn suffix_regex(pattern: &str) -> LoraResult<Regex> {
    Regex::new(&format!("^(?:.*\\.)?(?:{pattern})$"))
        .map_err(|e| LoraError::InvalidConfig(format!("pattern {pattern:?}: {e}")))
}

/// The first numbered path segment after a named one: `model.layers.3.mlp.up_proj` → 3.
fn layer_index(path: &str) -> Option<usize> {
    let parts: Vec<&str> = path.split('.').collect();
    // PEFT: `.*?\.[^.]*\.(\d+)\.`: a numeric segment preceded by at least two segments and
    // followed by another.
    (2..parts.len().saturating_sub(1)).find_map(|i| parts[i].parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str = "model.layers.3.self_attn.q_proj";

    #[test]
    fn matching_follows_peft() {
        let c = LoraConfig::default();
        assert!(c.targets(Q, Some("lm_head")).unwrap());
        assert!(!c.targets("model.layers.3.mlp.up_proj", None).unwrap());
        let c = c.with_target_modules(TargetModules::names(&["self_attn.q_proj"]));
        assert!(c.targets(Q, None).unwrap());
        let c = c.with_target_modules(TargetModules::names(&["proj"]));
        assert!(
            !c.targets(Q, None).unwrap(),
            "suffix must be a whole segment"
        );
        let c = c.with_target_modules(TargetModules::Regex(r".*\.(q|v)_proj".into()));
        assert!(c.targets(Q, None).unwrap());
        assert!(!c.targets("model.layers.3.self_attn.k_proj", None).unwrap());
        let c = c.with_target_modules(TargetModules::AllLinear);
        assert!(c.targets(Q, Some("lm_head")).unwrap());
        assert!(!c.targets("lm_head", Some("lm_head")).unwrap());
        let c = LoraConfig::default().with_layers_to_transform(Some(vec![0, 3]));
        assert!(c.targets(Q, None).unwrap());
        assert!(!c.targets("model.layers.1.self_attn.q_proj", None).unwrap());
        assert_eq!(layer_index("model.layers.12.mlp.up_proj"), Some(12));
        assert_eq!(layer_index("lm_head"), None);
    }

    #[test]
    fn patterns_override_rank_and_alpha() {
        let mut c = LoraConfig::new(8, 16.0);
        c.rank_pattern.insert("q_proj".into(), 4);
        c.alpha_pattern.insert(r"layers\.3\..*".into(), 2.0);
        assert_eq!(c.rank_and_alpha(Q).unwrap(), (4, 2.0));
        assert_eq!(
            c.rank_and_alpha("model.layers.0.mlp.up_proj").unwrap(),
            (8, 16.0)
        );
    }

    #[test]
    fn peft_json_round_trips() {
        let mut c = LoraConfig::qlora()
            .with_use_dora(true)
            .with_layers_to_transform(Some(vec![1]));
        c.rank_pattern.insert("down_proj".into(), 16);
        let adapted = vec![Q.to_string(), "model.layers.3.mlp.down_proj".to_string()];
        let v = c.to_peft_json(&adapted);
        assert_eq!(v["target_modules"], json!(["down_proj", "q_proj"]));
        assert_eq!(v["lora_alpha"], json!(16));
        let back = LoraConfig::from_peft_json(&v, Path::new("adapter_config.json")).unwrap();
        assert_eq!(
            back.target_modules,
            TargetModules::names(&["down_proj", "q_proj"])
        );
        assert_eq!((back.r, back.alpha, back.dropout), (64, 16.0, 0.05));
        assert!(back.use_dora && !back.use_rslora);
        assert_eq!(back.rank_pattern, c.rank_pattern);
        assert_eq!(back.layers_to_transform, Some(vec![1]));
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let p = Path::new("a/adapter_config.json");
        let e = LoraConfig::from_peft_json(&json!({"r": 0, "target_modules": ["q_proj"]}), p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("adapter_config.json") && e.contains("r must be"),
            "{e}"
        );
        let e = LoraConfig::from_peft_json(&json!({"r": "8", "target_modules": ["q"]}), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`r`"), "{e}");
        let e = LoraConfig::from_peft_json(&json!({"r": 8}), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("target_modules"), "{e}");
        let e =
            LoraConfig::from_peft_json(&json!({"r": 8, "target_modules": ["q"], "bias": "all"}), p)
                .unwrap_err()
                .to_string();
        assert!(e.contains("bias"), "{e}");
        let e = LoraConfig::from_peft_json(&json!({"peft_type": "IA3"}), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("IA3"), "{e}");
        assert!(
            LoraConfig::new(8, 8.0)
                .with_dropout(1.0)
                .validate()
                .is_err()
        );
        assert!(
            LoraConfig::default()
                .with_target_modules(TargetModules::Regex("(".into()))
                .validate()
                .is_err()
        );
    }
}
