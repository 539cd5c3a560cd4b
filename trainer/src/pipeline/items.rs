//! A stage's data: read (and refused) before the model loads, then tokenized for it and
//! trained — documents (CPT), conversations (SFT), pairs (DPO), labelled answers (KTO).

use std::path::Path;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use kefu_model::LoadedModel;

use super::{Settings, Watch, on_step, report_skipped};
use crate::data::{self, OnBadLine, Tokenized};
use crate::recipe::StageKind;
use crate::run::Report;
use crate::{cpt, dpo, kto, sft};

/// At most `limit` held-out items (0: all), spread evenly over the list so that every part of
/// the file (often one source after another) is represented.
fn limited<T>(items: Vec<T>, limit: usize) -> Vec<T> {
    let n = items.len();
    if limit == 0 || limit >= n {
        return items;
    }
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| (i * limit) % n < limit)
        .map(|(_, item)| item)
        .collect()
}

/// The training items and at most `--eval-limit` eval items: the eval split's lines when one is
/// named, else `split`'s hash share of the training lines.
fn train_and_eval<T>(
    settings: &Settings,
    train: Vec<T>,
    eval: Vec<T>,
    split: impl FnOnce(Vec<T>, f64) -> (Vec<T>, Vec<T>),
) -> (Vec<T>, Vec<T>) {
    let (train, eval) = match settings.eval_split {
        Some(_) => (train, eval),
        None => split(train, settings.eval_fraction),
    };
    (train, limited(eval, settings.eval_limit))
}

/// The text of every readable document under `path`; unreadable ones are reported (and
/// skipped, or fatal with `--on-bad-line fail`).
fn read_documents(path: &Path, rule: OnBadLine) -> Result<Vec<String>> {
    let mut files = Vec::new();
    if path.is_dir() {
        let mut pending = vec![path.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read the folder {}", dir.display()))?
            {
                let entry = entry?.path();
                if entry.is_dir() {
                    pending.push(entry);
                } else if kefu_rag::parse::Format::of(&entry).is_ok() {
                    files.push(entry);
                }
            }
        }
    } else if path.exists() {
        files.push(path.to_path_buf());
    } else {
        bail!("{}: no such file or folder", path.display());
    }
    files.sort();
    let mut texts = Vec::new();
    for file in &files {
        match kefu_rag::parse::parse_file(file) {
            Ok(doc) => {
                let mut text = format!("# {}\n\n", doc.title);
                for section in doc.sections {
                    if let Some(heading) = section.heading_path.last() {
                        text.push_str(&format!("## {heading}\n\n"));
                    }
                    text.push_str(&section.text);
                    text.push_str("\n\n");
                }
                texts.push(text);
            }
            Err(e) if rule == OnBadLine::Fail => bail!("{}: {e}", file.display()),
            Err(e) => eprintln!("{}: {e} (skipped)", file.display()),
        }
    }
    if texts.is_empty() {
        bail!(
            "{} holds no readable documents (.md, .markdown, .html, .htm, .txt, .pdf)",
            path.display()
        );
    }
    Ok(texts)
}

/// Tokenizes every item; those that do not fit (`None`) are counted in `too_long`.
fn tokenize_all<T, U>(
    items: &[T],
    tokenize: impl Fn(&T) -> crate::Result<Option<U>>,
    too_long: &mut usize,
) -> Result<Vec<U>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match tokenize(item)? {
            Some(t) => out.push(t),
            None => *too_long += 1,
        }
    }
    Ok(out)
}

/// A stage's data, read (and refused) before the model loads.
pub(super) enum Items {
    Documents(Vec<String>),
    Conversations(data::Loaded, Vec<data::Conversation>),
    Pairs(dpo::LoadedPairs, Vec<dpo::Preference>),
    Unpaired(kto::LoadedUnpaired, Vec<kto::Unpaired>),
}

/// Reads the stage's data; bad lines are reported (or fatal, as the settings say).
pub(super) fn read_items(settings: &Settings) -> Result<Items> {
    let rule = settings.on_bad_line;
    let data = &settings.data;
    let split = settings.split.as_deref();
    let items = match settings.kind {
        StageKind::Cpt => Items::Documents(read_documents(data, rule)?),
        StageKind::Sft => {
            let loaded = data::read_jsonl_split(data, rule, split)?;
            report_skipped(data, &loaded.skipped);
            let eval = match &settings.eval_split {
                Some(s) => data::read_jsonl_split(data, rule, Some(s))?.conversations,
                None => Vec::new(),
            };
            Items::Conversations(loaded, eval)
        }
        StageKind::Dpo => {
            let loaded = dpo::read_pairs_split(data, rule, split)?;
            report_skipped(data, &loaded.skipped);
            let eval = match &settings.eval_split {
                Some(s) => dpo::read_pairs_split(data, rule, Some(s))?.pairs,
                None => Vec::new(),
            };
            Items::Pairs(loaded, eval)
        }
        StageKind::Kto => {
            let loaded = kto::read_unpaired_split(data, rule, split)?;
            report_skipped(data, &loaded.skipped);
            let eval = match &settings.eval_split {
                Some(s) => kto::read_unpaired_split(data, rule, Some(s))?.examples,
                None => Vec::new(),
            };
            Items::Unpaired(loaded, eval)
        }
    };
    Ok(items)
}

/// Tokenizes the stage's data for `model` and trains it.
pub(super) fn train_items(
    model: &mut LoadedModel,
    settings: &Settings,
    items: Items,
    output: &Path,
    resume: bool,
    bar: &ProgressBar,
    watch: &mut Watch<'_>,
) -> Result<Report> {
    let config = &settings.config;
    let limit = settings.eval_limit;
    let max_len = settings.max_len;
    let mut too_long = 0;
    let report = match items {
        Items::Documents(texts) => {
            let blocks = cpt::blocks(model, &texts, max_len)?;
            let (train, eval) = cpt::split(blocks, settings.eval_fraction);
            let eval = limited(eval, limit);
            eprintln!(
                "{} documents: {} training and {} held-out blocks of {max_len} tokens",
                texts.len(),
                train.len(),
                eval.len()
            );
            sft::train(
                model,
                &settings.model,
                &train,
                &eval,
                config,
                output,
                resume,
                on_step(bar, watch),
            )?
        }
        Items::Conversations(loaded, eval) => {
            let (train, eval) = train_and_eval(settings, loaded.conversations, eval, data::split);
            let tokenize = |c: &data::Conversation| data::tokenize(model, c, max_len);
            let train: Vec<Tokenized> = tokenize_all(&train, tokenize, &mut too_long)?;
            let eval = tokenize_all(&eval, tokenize, &mut too_long)?;
            eprintln!(
                "{} training and {} eval examples ({} duplicates dropped, {} bad lines skipped, \
                 {too_long} prompts longer than --max-len {max_len} skipped)",
                train.len(),
                eval.len(),
                loaded.duplicates,
                loaded.skipped.len(),
            );
            sft::train(
                model,
                &settings.model,
                &train,
                &eval,
                config,
                output,
                resume,
                on_step(bar, watch),
            )?
        }
        Items::Pairs(loaded, eval) => {
            let (train, eval) = train_and_eval(settings, loaded.pairs, eval, dpo::split);
            let tokenize = |p: &dpo::Preference| dpo::tokenize_pair(model, p, max_len);
            let train = tokenize_all(&train, tokenize, &mut too_long)?;
            let eval = tokenize_all(&eval, tokenize, &mut too_long)?;
            eprintln!(
                "{} training and {} eval pairs ({} duplicates dropped, {} bad lines skipped, \
                 {too_long} prompts longer than --max-len {max_len} skipped); computing the \
                 reference model's log-probabilities",
                train.len(),
                eval.len(),
                loaded.duplicates,
                loaded.skipped.len(),
            );
            dpo::train(
                model,
                &settings.model,
                &train,
                &eval,
                config,
                output,
                resume,
                on_step(bar, watch),
            )?
        }
        Items::Unpaired(loaded, eval) => {
            let (train, eval) = train_and_eval(settings, loaded.examples, eval, kto::split);
            let (train, dropped) = kto::tokenize_all(model, &train, max_len)?;
            let (eval, dropped_eval) = kto::tokenize_all(model, &eval, max_len)?;
            too_long += dropped + dropped_eval;
            let good = train.iter().filter(|e| e.desirable).count();
            eprintln!(
                "{} training examples ({good} good, {} bad answers) and {} eval examples ({} \
                 duplicates dropped, {} bad lines skipped, {too_long} prompts longer than \
                 --max-len {max_len} skipped); computing the reference model's log-probabilities",
                train.len(),
                train.len() - good,
                eval.len(),
                loaded.duplicates,
                loaded.skipped.len(),
            );
            kto::train(
                model,
                &settings.model,
                &train,
                &eval,
                config,
                output,
                resume,
                on_step(bar, watch),
            )?
        }
    };
    Ok(report)
}
