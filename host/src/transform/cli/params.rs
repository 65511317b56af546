//! The chain `transform test` runs: a pipeline file's (`--pipeline`) or the `--component`s,
//! with the `--with` params given to each.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::run::test_options;
use super::usage;
use crate::transform::config::TransformConfig;
use crate::transform::error::LoadError;
use crate::transform::runtime::TransformChain;

/// Gives components that share a name (the same `.wasm` twice in a chain) their position too,
/// `filter#1` and `filter#2`, so that counts, failures and `--expect-failures` stages tell them
/// apart. Done after `--with` is assigned, which scopes such components by position.
pub(super) fn name_apart(configs: &mut [TransformConfig]) {
    let names: Vec<String> = configs.iter().map(|c| c.display_name()).collect();
    for (i, cfg) in configs.iter_mut().enumerate() {
        if names.iter().filter(|n| same_name(n, &names[i])).count() > 1 {
            cfg.name = Some(format!("{}#{}", names[i], i + 1));
        }
    }
}

/// A pipeline file's chain and source, for `transform test --pipeline`.
pub(super) struct PipelineChain {
    /// Its transforms, named and with their components' paths resolved.
    pub(super) configs: Vec<TransformConfig>,
    /// Its CSV source's settings.
    pub(super) source: crate::source::config::CsvSourceConfig,
    /// Its source file, resolved.
    pub(super) input: PathBuf,
    /// The file itself, to name the key of a param a transform refuses.
    pub(super) loaded: crate::config::LoadedConfig,
}

impl PipelineChain {
    /// Reads `file` as `sluice run` does (environment variables substituted, their values masked
    /// in sluice's output). Only mistakes in its transforms and its source refuse it (a test
    /// uses no broker and no warehouse), and of the source's, only its delimiter's unless
    /// `its_input`: the test reads the source file.
    pub(super) fn load(file: &Path, its_input: bool) -> anyhow::Result<PipelineChain> {
        let loaded = crate::config::load_for_transforms(file)?;
        loaded.mask_secrets_in_output();
        let issues: Vec<_> = crate::validate::validate(&loaded)
            .into_iter()
            .filter(|i| {
                let source = match its_input {
                    true => i.path.starts_with("source"),
                    false => i.path == "source.delimiter",
                };
                source || i.path.starts_with("transforms")
            })
            .collect();
        if !issues.is_empty() {
            return Err(loaded.invalid(issues).into());
        }
        let crate::source::config::SourceConfig::Csv(source) = &loaded.config.source;
        Ok(PipelineChain {
            configs: crate::validate::chain_configs(&loaded),
            input: loaded.resolve(&source.path),
            source: source.clone(),
            loaded,
        })
    }

    /// Loads `configs` (this file's chain with the command line's flags) for [`test()`]. A
    /// transform that refuses a param the file gave, or runs out of a limit it set, is a mistake
    /// in the file (exit 2 naming its key, as `sluice run` does); a param given by `--with`, or
    /// a limit in `flagged` (the settings given by flags), is the command's, as without a file.
    ///
    /// [`test()`]: super::test
    pub(super) fn load_chain(
        &self,
        configs: &[TransformConfig],
        flagged: &[&str],
        workers: usize,
    ) -> anyhow::Result<TransformChain> {
        let errors = match TransformChain::load_each(configs, &test_options(workers)) {
            Ok(chain) => return Ok(chain),
            Err(errors) => errors,
        };
        let mut issues = Vec::new();
        for (i, e) in errors {
            let from_file = |p: &str| {
                let file = self.configs[i].with.get(p);
                file.is_some() && file == configs[i].with.get(p)
            };
            let engine = matches!(e, LoadError::Engine(_));
            let by_flag = e.setting().is_some_and(|s| flagged.contains(&s));
            let by_command = match e.param() {
                Some(p) => !from_file(p),
                None => by_flag,
            };
            match e.param() {
                _ if by_command => {
                    return Err(usage(
                        anyhow::Error::new(e).context("loading the transforms"),
                    ));
                }
                _ if engine => return Err(anyhow::Error::new(e).context("loading the transforms")),
                _ => issues.push(
                    self.loaded
                        .issue(&crate::validate::component_issue_path(i, &e), e.to_string()),
                ),
            }
        }
        Err(self.loaded.invalid(issues).into())
    }
}

/// [`assign_params`] over params the chain may have already (a pipeline file's): a `--with`
/// replaces the param it names. A param given twice in `with` is still an error.
pub(super) fn override_params(
    configs: &mut [TransformConfig],
    with: &[String],
) -> anyhow::Result<()> {
    let mut given: Vec<TransformConfig> = configs
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.with.clear();
            c
        })
        .collect();
    assign_params(&mut given, with)?;
    for (cfg, given) in configs.iter_mut().zip(given) {
        cfg.with.extend(given.with);
    }
    Ok(())
}

/// Distributes `KEY=VALUE` / `NAME.KEY=VALUE` params over the chain. NAME is a component's name
/// (`-` and `_` alike, since `transform new my-thing` builds `transform_my_thing.wasm`) or its
/// 1-based position. With one component an unknown NAME is part of the key (`a.b=c` is param
/// `a.b`), unless it is one or two letters off the component's name (a misspelt scope, which
/// would otherwise reach `init` as a param no guest reads), and a position other than 1 is still
/// an error; with several, every param must be scoped to exactly one component. A param given
/// twice for one component is an error: silently keeping the last one hides a typo in a long
/// command.
fn assign_params(configs: &mut [TransformConfig], with: &[String]) -> anyhow::Result<()> {
    let names: Vec<String> = configs.iter().map(|c| c.display_name()).collect();
    let listed = || {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{} {n}", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if names.is_empty() && !with.is_empty() {
        bail!("--with: the chain has no transforms to give params to");
    }
    for item in with {
        let (key, value) = item
            .split_once('=')
            .filter(|(key, _)| !key.trim().is_empty())
            .with_context(|| format!("--with {item:?} is not KEY=VALUE"))?;
        // A component's name may hold dots itself (`filter.v2.wasm` is `filter.v2`): the longest
        // prefix that names one is the scope.
        let split = key
            .match_indices('.')
            .rev()
            .map(|(at, _)| (&key[..at], &key[at + 1..]))
            .find(|(scope, _)| !matches!(scope_of(&names, scope), Scope::Unknown))
            .or_else(|| key.split_once('.'));
        let (i, k) = match split {
            Some((_, k)) if k.trim().is_empty() => {
                bail!("--with {item:?} is not NAME.KEY=VALUE: the key is empty")
            }
            Some((scope, k)) => match scope_of(&names, scope) {
                Scope::One(i) => (i, k),
                Scope::Unknown if scope.parse::<usize>().is_ok() => bail!(
                    "--with {item:?}: position {scope} is out of range: {}",
                    match names.len() {
                        1 => format!("there is one component ({})", listed()),
                        n => format!(
                            "there are {n} components, at positions 1 to {n} ({})",
                            listed()
                        ),
                    }
                ),
                Scope::Unknown if names.len() == 1 && !near(&names[0], scope) => (0, key),
                Scope::Unknown if names.len() == 1 => bail!(
                    "--with {item:?}: no component is named {scope:?}; did you mean {:?}? To \
                     pass a param named {key:?}, scope it by position: 1.{key}={value}",
                    names[0]
                ),
                Scope::Unknown => bail!(
                    "--with {item:?}: no component is named {scope:?}{} (components: {})",
                    match names.iter().find(|n| near(n, scope)) {
                        Some(n) => format!("; did you mean {n:?}?"),
                        None => String::new(),
                    },
                    listed()
                ),
                Scope::Ambiguous(at) => bail!(
                    "--with {item:?}: {scope:?} is ambiguous, it names the components at \
                     positions {}; scope the param by position instead (POSITION.KEY=VALUE)",
                    at.iter()
                        .map(|i| (i + 1).to_string())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            },
            None if names.len() == 1 => (0, key),
            None => bail!(
                "--with {item:?}: with several components, scope params as NAME.KEY=VALUE, NAME \
                 being a component's name or position ({})",
                listed()
            ),
        };
        if configs[i]
            .with
            .insert(k.to_owned(), value.to_owned())
            .is_some()
        {
            bail!(
                "--with {item:?}: param {k:?} of {} is given more than once",
                names[i]
            );
        }
    }
    Ok(())
}

/// Whether two transform or crate names are the same with `-` and `_` alike: `transform new
/// my-thing` builds `transform_my_thing.wasm`, whose component is named `my_thing`.
pub(super) fn same_name(a: &str, b: &str) -> bool {
    a.replace('-', "_") == b.replace('-', "_")
}

/// Whether `scope` is a few edits (a letter added, dropped or changed) off the name `name`, with
/// `-` and `_` alike and case ignored: a misspelling of it rather than another word. One edit
/// for a name of up to 6 letters, two for a longer one: two edits make `max` of `mask`.
fn near(name: &str, scope: &str) -> bool {
    let fold = |s: &str| -> Vec<char> { s.to_lowercase().replace('-', "_").chars().collect() };
    let (a, b) = (fold(name), fold(scope));
    let most = if a.len() <= 6 { 1 } else { 2 };
    if b.len() < 3 || a.len().abs_diff(b.len()) > most {
        return false;
    }
    // Edit distance with two neighbours swapped as one edit (`enrcih`), the commonest typo.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    (0..=a.len()).for_each(|i| d[i][0] = i);
    (0..=b.len()).for_each(|j| d[0][j] = j);
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let changed = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + changed);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()] <= most
}

/// Which components the NAME of a `--with NAME.KEY=VALUE` picks.
enum Scope {
    One(usize),
    Unknown,
    Ambiguous(Vec<usize>),
}

/// Resolves a `--with` scope against the chain's names, then as a 1-based position.
fn scope_of(names: &[String], scope: &str) -> Scope {
    // A name given exactly wins over names that match it only with `-` for `_` (a pipeline
    // file's `my-step` and `my_step` are two names).
    let exact: Vec<usize> = (0..names.len()).filter(|&i| names[i] == scope).collect();
    if let [i] = exact[..] {
        return Scope::One(i);
    }
    let by_name: Vec<usize> = (0..names.len())
        .filter(|&i| same_name(&names[i], scope))
        .collect();
    match by_name[..] {
        [i] => Scope::One(i),
        [] => match scope.parse::<usize>() {
            Ok(p) if (1..=names.len()).contains(&p) => Scope::One(p - 1),
            _ => Scope::Unknown,
        },
        _ => Scope::Ambiguous(by_name),
    }
}

/// The params in `path`, read as pipeline.json's `with` is: a JSON object of strings, numbers
/// and flags, each key once. Not a pipeline file, so no `${VAR}` is replaced.
pub(super) fn read_params(
    path: &Path,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let params = crate::transform::config::params_from_json(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (it holds the transform's params as a JSON object, as its `with` in \
             pipeline.json: {{\"field\": \"name\"}})",
            path.display()
        )
    })?;
    if let Some(issue) = crate::config::duplicate_keys(&text).first() {
        bail!("{}: {issue}", path.display());
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_scoped_by_name_or_position() {
        let mut configs = vec![
            TransformConfig::new("a/transform_filter.wasm"),
            TransformConfig::new("b/enrich.wasm"),
        ];
        assign_params(
            &mut configs,
            &["filter.op=gt".into(), "2.uppercase=name".into()],
        )
        .unwrap();
        assert_eq!(configs[0].with.get("op").map(String::as_str), Some("gt"));
        assert_eq!(
            configs[1].with.get("uppercase").map(String::as_str),
            Some("name")
        );
        let err = |configs: &mut [TransformConfig], item: &str| {
            assign_params(configs, &[item.into()])
                .unwrap_err()
                .to_string()
        };
        let says = err(&mut configs, "op=gt");
        assert!(says.contains("NAME.KEY=VALUE"), "{says}");
        let says = err(&mut configs, "1.op=lt");
        assert!(says.contains("more than once"), "{says}");
        for position in ["3", "0"] {
            let says = err(&mut configs, &format!("{position}.op=lt"));
            assert!(
                says.contains(&format!(
                    "position {position} is out of range: there are 2 components, at positions 1 to 2 (1 filter, 2 enrich)"
                )),
                "{says}"
            );
        }
        let says = err(&mut configs, "filtr.op=lt");
        assert!(
            says.contains(
                "no component is named \"filtr\"; did you mean \"filter\"? (components: 1 \
                 filter, 2 enrich)"
            ),
            "{says}"
        );

        // `transform new my-thing` builds `transform_my_thing.wasm`, named `my_thing`.
        let mut twice = vec![
            TransformConfig::new("transform_my_thing.wasm"),
            TransformConfig::new("b/enrich.wasm"),
            TransformConfig::new("a/transform_my_thing.wasm"),
        ];
        let says = err(&mut twice, "my-thing.k=v");
        assert!(
            says.contains(
                "\"my-thing\" is ambiguous, it names the components at positions 1 and 3"
            ),
            "{says}"
        );
        assign_params(&mut twice, &["3.k=v".into(), "enrich.k=w".into()]).unwrap();
        assert_eq!(twice[2].with.get("k").map(String::as_str), Some("v"));
        assert_eq!(twice[1].with.get("k").map(String::as_str), Some("w"));
        twice.remove(2);
        assign_params(&mut twice, &["my-thing.k=v".into()]).unwrap();
        assert_eq!(twice[0].with.get("k").map(String::as_str), Some("v"));

        // With one component a dotted key is a param unless it names the component, but a
        // position must still be 1.
        let mut one = vec![TransformConfig::new("x.wasm")];
        assign_params(&mut one, &["a.b=c".into(), "1.d=e".into(), "x.f=g".into()]).unwrap();
        assert_eq!(one[0].with.get("a.b").map(String::as_str), Some("c"));
        assert_eq!(one[0].with.get("d").map(String::as_str), Some("e"));
        assert_eq!(one[0].with.get("f").map(String::as_str), Some("g"));
        // ... but a near miss of its name is a misspelt scope, not a param.
        let mut named = vec![TransformConfig::new("transform_currency_norm.wasm")];
        let says = err(&mut named, "curency-norm.rates=x");
        assert!(
            says.contains(
                "no component is named \"curency-norm\"; did you mean \"currency_norm\"? To \
                 pass a param named \"curency-norm.rates\", scope it by position: \
                 1.curency-norm.rates=x"
            ),
            "{says}"
        );
        assign_params(
            &mut named,
            &["1.curency-norm.rates=x".into(), "rates.eur=1".into()],
        )
        .unwrap();
        assert_eq!(named[0].with.len(), 2);
        assert!(!near("x", "a") && near("filter", "filtr") && !near("filter", "enrich"));
        assert!(near("currency_norm", "curency-nrm") && !near("mask", "max"));
        assert!(near("mask", "mas") && !near("enrich", "rich") && near("enrich", "enrcih"));
        let says = err(&mut one, "2.d=e");
        assert!(
            says.contains("position 2 is out of range: there is one component (1 x)"),
            "{says}"
        );

        // A name with dots in it scopes by its longest prefix that names a component.
        let mut dotted = vec![
            TransformConfig::new("filter.v2.wasm"),
            TransformConfig::new("enrich.wasm"),
        ];
        assign_params(
            &mut dotted,
            &["filter.v2.field=v".into(), "enrich.a.b=c".into()],
        )
        .unwrap();
        assert_eq!(dotted[0].with.get("field").map(String::as_str), Some("v"));
        assert_eq!(dotted[1].with.get("a.b").map(String::as_str), Some("c"));
        dotted.pop();
        assign_params(&mut dotted, &["filter.v2.op=gt".into()]).unwrap();
        assert_eq!(dotted[0].with.get("op").map(String::as_str), Some("gt"));

        // A name given exactly wins over one that matches it only with `-` for `_`.
        let mut close: Vec<TransformConfig> = ["my-step", "my_step"]
            .iter()
            .map(|n| {
                let mut c = TransformConfig::new("x.wasm");
                c.name = Some((*n).to_owned());
                c
            })
            .collect();
        assign_params(&mut close, &["my_step.k=v".into()]).unwrap();
        assert_eq!(close[1].with.get("k").map(String::as_str), Some("v"));
        assert!(close[0].with.is_empty());

        let says = err(&mut [], "k=v");
        assert!(says.contains("the chain has no transforms"), "{says}");
    }
}
