//! `attnbench merge`: the result sets of a grid's shards (or of any runs of the same grid),
//! checked to be one experiment at one revision and not to overlap, put back together in grid
//! order as one set, each point keeping the run, and so the machine, that measured it.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use thiserror::Error;

use super::file::{ResultsFile, RunRecord};
use crate::experiment::Shard;

/// One piece to merge: a results directory and its `results.json`.
#[derive(Clone, Debug)]
pub struct Piece {
    /// The directory, to name it in errors.
    pub dir: PathBuf,
    /// Its results.
    pub results: ResultsFile,
}

/// Why pieces cannot be merged. Nothing is written when one of these is returned.
#[derive(Debug, Error, PartialEq)]
pub enum MergeError {
    /// No piece was given.
    #[error("nothing to merge: give at least one results directory")]
    NoPieces,
    /// A piece does not record its grid's hash, so nothing says which experiment it is.
    #[error(
        "{0}: its results.json records no grid_hash (it was written before attnbench recorded grids), so it cannot be matched to the other pieces; run it again"
    )]
    NoGridHash(PathBuf),
    /// Two pieces come from different experiments (or different versions of one file):
    /// each named with its grid hash and experiment name.
    #[error(
        "{} is not the same experiment as {}: its grid is {}, the first piece's {}; only shards of one experiment file, unchanged, can be merged",
        other.dir.display(), first.dir.display(), other.recorded, first.recorded
    )]
    DifferentExperiments {
        /// The first piece.
        first: Box<Recorded>,
        /// The piece that differs.
        other: Box<Recorded>,
    },
    /// Two pieces were measured by different builds of attnbench: each named with its
    /// revision.
    #[error(
        "{} was measured by attnbench at {}, {} at {}; pieces of one result set must come from the same revision",
        other.dir.display(), other.recorded, first.dir.display(), first.recorded
    )]
    DifferentRevisions {
        /// The first piece.
        first: Box<Recorded>,
        /// The piece that differs.
        other: Box<Recorded>,
    },
    /// Two pieces hold the same point.
    #[error(
        "point `{key}` is in both {first} and {dir}: the pieces overlap (the same shard twice, or shards of different splits?)"
    )]
    Overlap {
        /// The point.
        key: String,
        /// The piece that holds it first.
        first: PathBuf,
        /// The other.
        dir: PathBuf,
    },
    /// A merged set that lacks points cannot be a piece: where its points sit in the grid is
    /// no longer recorded.
    #[error(
        "{0} is an incomplete merge ({1} of {2} points); merge the shards it came from together with the others instead"
    )]
    IncompletePiece(PathBuf, usize, usize),
}

/// A piece as a refusal names it: its directory and what it records that differs.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// The piece's directory.
    pub dir: PathBuf,
    /// What it records, e.g. ``fnv1a64:a12b01e170d42654 (`tiny`)`` or a revision.
    pub recorded: String,
}

impl Recorded {
    fn boxed(dir: &std::path::Path, recorded: String) -> Box<Self> {
        Box::new(Self {
            dir: dir.to_path_buf(),
            recorded,
        })
    }
}

/// The grid points no piece holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Missing {
    /// Points of the whole grid.
    pub grid_points: usize,
    /// 0-based grid positions no piece holds, ascending.
    pub positions: Vec<usize>,
    /// Shards of the split the pieces come from that no piece is, e.g. `2/3`.
    pub shards: Vec<Shard>,
}

/// The merged set, and what it lacks.
#[derive(Clone, Debug)]
pub struct Merged {
    /// One result set: every piece's points in grid order, `runs` naming each piece's run.
    pub results: ResultsFile,
    /// Grid points no piece holds (none when the pieces cover the grid).
    pub missing: Missing,
}

/// A piece's points with their grid positions, and the runs they name.
struct Placed {
    positions: Vec<usize>,
    runs: Vec<RunRecord>,
    grid_points: usize,
}

/// Where a piece's points sit in the grid and which runs measured them: a shard's record says;
/// a whole set (or a complete merge) holds the grid in order.
fn place(piece: &Piece) -> Result<Placed, MergeError> {
    let r = &piece.results;
    let (positions, grid_points) = match &r.experiment.shard {
        Some(shard) if shard.positions.len() == r.points.len() => {
            (shard.positions.clone(), shard.grid_points)
        }
        _ if r.points.len() == r.experiment.points_planned => {
            ((0..r.points.len()).collect(), r.experiment.points_planned)
        }
        _ => {
            return Err(MergeError::IncompletePiece(
                piece.dir.clone(),
                r.points.len(),
                r.experiment.points_planned,
            ));
        }
    };
    let runs = if r.runs.is_empty() {
        vec![RunRecord {
            shard: r.experiment.shard.as_ref().map(|s| s.shard),
            environment: r.environment.clone(),
            machine: r.machine.clone(),
        }]
    } else {
        r.runs.clone()
    };
    Ok(Placed {
        positions,
        runs,
        grid_points,
    })
}

/// Checks that every piece records the first's grid and revision.
fn check_same(pieces: &[Piece]) -> Result<(), MergeError> {
    let first = &pieces[0];
    let hash = |p: &Piece| {
        p.results
            .experiment
            .grid_hash
            .clone()
            .ok_or_else(|| MergeError::NoGridHash(p.dir.clone()))
    };
    let revisions = |p: &Piece| -> Vec<String> {
        match p.results.runs.is_empty() {
            true => vec![p.results.environment.git_revision.clone()],
            false => p
                .results
                .runs
                .iter()
                .map(|r| r.environment.git_revision.clone())
                .collect(),
        }
    };
    let (first_hash, first_revision) = (hash(first)?, revisions(first)[0].clone());
    let grid = |p: &Piece, hash: String| format!("{hash} (`{}`)", p.results.experiment.name);
    for piece in pieces {
        let h = hash(piece)?;
        if h != first_hash {
            return Err(MergeError::DifferentExperiments {
                first: Recorded::boxed(&first.dir, grid(first, first_hash)),
                other: Recorded::boxed(&piece.dir, grid(piece, h)),
            });
        }
        if let Some(revision) = revisions(piece).into_iter().find(|r| *r != first_revision) {
            return Err(MergeError::DifferentRevisions {
                first: Recorded::boxed(&first.dir, first_revision),
                other: Recorded::boxed(&piece.dir, revision),
            });
        }
    }
    Ok(())
}

/// Merges `pieces` into one result set: refuses pieces of different grids
/// ([`MergeError::DifferentExperiments`]) or revisions, overlapping points, and incomplete
/// merges as pieces; puts the points in grid order, each naming its run in `runs`; reports
/// the grid points none holds in [`Merged::missing`] (the caller decides what a gap means).
/// The order the pieces are given in does not matter.
pub fn merge(pieces: &[Piece]) -> Result<Merged, MergeError> {
    if pieces.is_empty() {
        return Err(MergeError::NoPieces);
    }
    check_same(pieces)?;
    let mut placed: Vec<(&Piece, Placed)> = pieces
        .iter()
        .map(|p| place(p).map(|placed| (p, placed)))
        .collect::<Result<_, _>>()?;
    // Runs by shard, then by their first point, so that the result does not depend on the
    // order of the arguments.
    placed.sort_by_key(|(piece, p)| {
        let shard = piece.results.experiment.shard.as_ref().map(|s| s.shard);
        let first = p.positions.iter().min().copied().unwrap_or(usize::MAX);
        (shard, first)
    });
    let mut owner: HashMap<&str, &PathBuf> = HashMap::new();
    let mut points = Vec::new();
    let mut runs = Vec::new();
    for (piece, place) in &placed {
        for point in &piece.results.points {
            if let Some(first) = owner.insert(&point.key, &piece.dir) {
                return Err(MergeError::Overlap {
                    key: point.key.clone(),
                    first: first.clone(),
                    dir: piece.dir.clone(),
                });
            }
        }
        let offset = runs.len();
        for (point, &position) in piece.results.points.iter().zip(&place.positions) {
            let mut point = point.clone();
            point.run = Some(offset + point.run.unwrap_or(0));
            points.push((position, point));
        }
        runs.extend(place.runs.iter().cloned());
    }
    points.sort_by_key(|(position, _)| *position);
    let grid_points = placed.iter().map(|(_, p)| p.grid_points).max().unwrap_or(0);
    let missing = missing(&placed, &points, grid_points);
    let first = &placed[0].0.results;
    let mut experiment = first.experiment.clone();
    experiment.shard = None;
    experiment.points_planned = grid_points;
    experiment.points_resumed = placed
        .iter()
        .map(|(p, _)| p.results.experiment.points_resumed)
        .sum();
    let results = ResultsFile {
        format: first.format.clone(),
        experiment,
        environment: runs[0].environment.clone(),
        machine: runs[0].machine.clone(),
        skipped: first.skipped.clone(),
        points: points.into_iter().map(|(_, p)| p).collect(),
        runs,
    };
    Ok(Merged { results, missing })
}

/// The grid positions no piece holds, and the shards of the pieces' splits none is.
fn missing(
    placed: &[(&Piece, Placed)],
    points: &[(usize, super::PointResult)],
    grid_points: usize,
) -> Missing {
    let held: BTreeSet<usize> = points.iter().map(|(position, _)| *position).collect();
    let shards: BTreeSet<Shard> = placed
        .iter()
        .flat_map(|(_, p)| p.runs.iter().filter_map(|r| r.shard))
        .collect();
    let counts: BTreeSet<usize> = shards.iter().map(|s| s.count).collect();
    let absent = counts
        .iter()
        .flat_map(|&count| (1..=count).map(move |index| Shard { index, count }))
        .filter(|s| !shards.contains(s))
        .collect();
    Missing {
        grid_points,
        positions: (0..grid_points).filter(|p| !held.contains(p)).collect(),
        shards: absent,
    }
}
