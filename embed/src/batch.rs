//! Grouping texts into forward passes by a token budget.

/// Splits texts of the given token lengths into batches, longest first, so that each batch
/// pads to little: a batch holds at most `max_batch` texts and `count × longest ≤ budget`
/// tokens (a single text longer than the budget still gets a batch of its own).
/// Returns indices into `lengths`; every index appears exactly once.
pub(crate) fn plan_batches(
    lengths: &[usize],
    max_batch: usize,
    token_budget: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable sort: equal lengths keep input order, so plans are deterministic.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = lengths[i].max(1);
        let width = longest.max(len);
        if !current.is_empty()
            && (current.len() >= max_batch.max(1) || (current.len() + 1) * width > token_budget)
        {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respects_budget_and_covers_every_text_once() {
        let lengths = [5, 300, 12, 12, 80, 1, 256, 0, 40];
        for (max_batch, budget) in [(1, 10), (4, 512), (32, 1000), (3, 100_000)] {
            let plan = plan_batches(&lengths, max_batch, budget);
            let mut seen: Vec<usize> = plan.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            for batch in &plan {
                assert!(batch.len() <= max_batch);
                let longest = batch.iter().map(|&i| lengths[i].max(1)).max().unwrap_or(0);
                assert!(
                    batch.len() == 1 || batch.len() * longest <= budget,
                    "{batch:?}"
                );
            }
        }
        assert!(plan_batches(&[], 8, 100).is_empty());
    }
}
