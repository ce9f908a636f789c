//! NSGA-II's selection machinery (Deb, Pratap, Agarwal, Meyarivan 2002): constraint
//! domination, fast non-dominated sorting, crowding distance, environmental selection and binary
//! tournaments. All objectives are minimised. Ties are broken by index, so selection is a pure
//! function of the scores and the random stream.

use rand::Rng;

/// A point's objective values (minimised) and its total constraint violation (0 = feasible).
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Objective values, all minimised.
    pub objectives: Vec<f64>,
    /// Sum of normalised constraint excesses; 0 when every constraint holds.
    pub violation: f64,
}

/// Deb's constraint domination: a feasible point beats an infeasible one, of two infeasible
/// points the smaller violation wins, and two feasible points compare by Pareto dominance.
pub fn dominates(a: &Score, b: &Score) -> bool {
    match (a.violation > 0.0, b.violation > 0.0) {
        (false, true) => true,
        (true, false) => false,
        (true, true) => a.violation < b.violation,
        (false, false) => {
            let mut strictly = false;
            for (x, y) in a.objectives.iter().zip(&b.objectives) {
                if x > y {
                    return false;
                }
                strictly |= x < y;
            }
            strictly
        }
    }
}

/// Fronts of mutually non-dominated points, best first, indices ascending within a front.
pub fn fronts(scores: &[Score]) -> Vec<Vec<usize>> {
    let n = scores.len();
    let mut dominated_by = vec![0usize; n];
    let mut dominates_list: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in i + 1..n {
            if dominates(&scores[i], &scores[j]) {
                dominates_list[i].push(j);
                dominated_by[j] += 1;
            } else if dominates(&scores[j], &scores[i]) {
                dominates_list[j].push(i);
                dominated_by[i] += 1;
            }
        }
    }
    let mut out = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| dominated_by[i] == 0).collect();
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            for &j in &dominates_list[i] {
                dominated_by[j] -= 1;
                if dominated_by[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        out.push(std::mem::take(&mut current));
        current = next;
    }
    out
}

/// Crowding distance of each member of `front` (same order): boundary points get infinity,
/// others the sum over objectives of the normalised gap between their neighbours.
pub fn crowding(scores: &[Score], front: &[usize]) -> Vec<f64> {
    let mut distance = vec![0.0; front.len()];
    if front.len() <= 2 {
        return vec![f64::INFINITY; front.len()];
    }
    let objectives = scores[front[0]].objectives.len();
    for m in 0..objectives {
        let value = |k: usize| scores[front[k]].objectives[m];
        let mut order: Vec<usize> = (0..front.len()).collect();
        order.sort_by(|&a, &b| value(a).total_cmp(&value(b)).then(front[a].cmp(&front[b])));
        let (lo, hi) = (value(order[0]), value(order[order.len() - 1]));
        distance[order[0]] = f64::INFINITY;
        distance[order[order.len() - 1]] = f64::INFINITY;
        // An infinite extreme (a genome the target cannot run) spreads nothing.
        if hi > lo && (hi - lo).is_finite() {
            for w in 1..order.len() - 1 {
                distance[order[w]] += (value(order[w + 1]) - value(order[w - 1])) / (hi - lo);
            }
        }
    }
    distance
}

/// Rank (front index) and crowding distance of every point.
pub fn rank_and_crowding(scores: &[Score]) -> (Vec<usize>, Vec<f64>) {
    let mut rank = vec![0; scores.len()];
    let mut crowd = vec![0.0; scores.len()];
    for (r, front) in fronts(scores).iter().enumerate() {
        for (&i, d) in front.iter().zip(crowding(scores, front)) {
            rank[i] = r;
            crowd[i] = d;
        }
    }
    (rank, crowd)
}

/// NSGA-II environmental selection: the indices of the `n` best points, filling whole fronts
/// and cutting the last one by descending crowding distance.
pub fn select(scores: &[Score], n: usize) -> Vec<usize> {
    let mut chosen = Vec::with_capacity(n);
    for front in fronts(scores) {
        if chosen.len() + front.len() <= n {
            chosen.extend(&front);
            continue;
        }
        let d = crowding(scores, &front);
        let mut order: Vec<usize> = (0..front.len()).collect();
        order.sort_by(|&a, &b| d[b].total_cmp(&d[a]).then(front[a].cmp(&front[b])));
        chosen.extend(order.iter().take(n - chosen.len()).map(|&k| front[k]));
        break;
    }
    chosen
}

/// Binary tournament: of two random points, the lower rank wins, then the larger crowding
/// distance, then the lower index.
pub fn tournament(rank: &[usize], crowd: &[f64], rng: &mut impl Rng) -> usize {
    let a = rng.random_range(0..rank.len());
    let b = rng.random_range(0..rank.len());
    let better = |x: usize, y: usize| {
        rank[x]
            .cmp(&rank[y])
            .then(crowd[y].total_cmp(&crowd[x]))
            .then(x.cmp(&y))
            .is_lt()
    };
    if better(a, b) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn s(objectives: &[f64], violation: f64) -> Score {
        Score {
            objectives: objectives.to_vec(),
            violation,
        }
    }

    #[test]
    fn constraint_domination_prefers_feasible_then_smaller_violation_then_pareto() {
        assert!(dominates(&s(&[9.0, 9.0], 0.0), &s(&[0.0, 0.0], 0.1)));
        assert!(dominates(&s(&[9.0], 0.1), &s(&[0.0], 0.2)));
        assert!(dominates(&s(&[1.0, 2.0], 0.0), &s(&[1.0, 3.0], 0.0)));
        assert!(!dominates(&s(&[1.0, 2.0], 0.0), &s(&[1.0, 2.0], 0.0)));
        assert!(!dominates(&s(&[1.0, 4.0], 0.0), &s(&[2.0, 3.0], 0.0)));
    }

    #[test]
    fn fronts_crowding_and_selection_on_a_hand_checked_example() {
        // Front 0: (1,5) (2,3) (4,1); front 1: (3,4) (5,2); front 2: (6,6); infeasible last.
        let scores = vec![
            s(&[1.0, 5.0], 0.0),
            s(&[3.0, 4.0], 0.0),
            s(&[2.0, 3.0], 0.0),
            s(&[6.0, 6.0], 0.0),
            s(&[4.0, 1.0], 0.0),
            s(&[5.0, 2.0], 0.0),
            s(&[0.0, 0.0], 1.0),
        ];
        assert_eq!(
            fronts(&scores),
            vec![vec![0, 2, 4], vec![1, 5], vec![3], vec![6]]
        );
        let d = crowding(&scores, &[0, 2, 4]);
        // Middle point: (4 - 1) / 3 + (5 - 1) / 4 = 2.
        assert_eq!(d, vec![f64::INFINITY, 2.0, f64::INFINITY]);
        assert_eq!(select(&scores, 4), vec![0, 2, 4, 1]);
        assert_eq!(select(&scores, 2), vec![0, 4]);
        let (rank, crowd) = rank_and_crowding(&scores);
        assert_eq!(rank, vec![0, 1, 0, 2, 0, 1, 3]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // Tournaments favour better ranks: the infeasible point wins only against itself.
        let wins = (0..2000)
            .filter(|_| tournament(&rank, &crowd, &mut rng) == 6)
            .count();
        assert!(wins < 2000 / 49 * 2, "{wins}");
    }
}
