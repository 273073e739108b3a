//! Category affinity ranking and "bought together" recommendations.
//!
//! **Ranking.** Every category the shopper bought from gets a weight: the number of units
//! bought in it (a purchase of 3 units in `["apparel", "socks"]` adds 3 to both). A
//! candidate's score is the sum of the weights of its categories (each category counted once).
//! Candidates are ordered by score, highest first; candidates with the same score, including
//! every candidate of no known category, keep the store's default order.
//!
//! **Recommendations**, up to the page's `limit`:
//!
//! 1. "Bought together": candidates that appear in a past order (same `order-id`) with any SKU
//!    now in the cart, most often first (counting the past order lines they appear in), then
//!    in ranking order;
//! 2. then the top of the ranking.
//!
//! SKUs already in the cart are never recommended, and a SKU is recommended at most once.
//!
//! A shopper with no purchases (an anonymous one, or a first-time customer) gets the default
//! order, exactly as without this plugin. There is no configuration.

use cartridge_sdk::PluginError;
use cartridge_sdk::personalization::{Candidate, Context, Personalization, Purchase, Ranking};

struct AffinityPersonalization;

/// A small map from text to a count, kept sorted by key. Sorted vectors instead of
/// `BTreeMap`s keep the component under 100 kB.
type Counts<'a> = Vec<(&'a str, u64)>;

fn bump<'a>(counts: &mut Counts<'a>, key: &'a str, by: u64) {
    match counts.binary_search_by(|(k, _)| (*k).cmp(key)) {
        Ok(i) => counts[i].1 = counts[i].1.saturating_add(by),
        Err(i) => counts.insert(i, (key, by)),
    }
}

fn get(counts: &Counts<'_>, key: &str) -> Option<u64> {
    let i = counts.binary_search_by(|(k, _)| (*k).cmp(key)).ok()?;
    Some(counts[i].1)
}

/// Units bought per category.
fn category_weights(purchases: &[Purchase]) -> Counts<'_> {
    let mut weights = Vec::new();
    for purchase in purchases {
        for category in distinct(&purchase.categories) {
            bump(&mut weights, category, u64::from(purchase.quantity));
        }
    }
    weights
}

/// The categories of a product, each once, in their order.
fn distinct(categories: &[String]) -> impl Iterator<Item = &str> {
    categories
        .iter()
        .enumerate()
        .filter(|(i, category)| !categories[..*i].contains(category))
        .map(|(_, category)| category.as_str())
}

/// The sum of the weights of the candidate's categories.
fn affinity(candidate: &Candidate, weights: &Counts<'_>) -> u64 {
    distinct(&candidate.categories)
        .filter_map(|category| get(weights, category))
        .fold(0, u64::saturating_add)
}

/// Candidate SKUs, highest affinity first; ties keep the default order.
fn ranked(context: &Context) -> Vec<String> {
    let weights = category_weights(&context.purchases);
    let mut scored: Vec<(u64, &Candidate)> = context
        .candidates
        .iter()
        .map(|candidate| (affinity(candidate, &weights), candidate))
        .collect();
    // A stable sort: equal scores stay in the default order.
    scored.sort_by_key(|&(score, _)| std::cmp::Reverse(score));
    scored.into_iter().map(|(_, c)| c.sku.clone()).collect()
}

/// Up to `limit` candidates: bought together with the cart first, then the top of `ranked`.
fn recommended(context: &Context, ranked: &[String]) -> Vec<String> {
    let limit = usize::try_from(context.limit).unwrap_or(usize::MAX);
    let in_cart = |sku: &str| context.cart_skus.iter().any(|s| s == sku);
    // SKU → its best position in the ranking: sorted by SKU then position, so `dedup` keeps
    // the first position of a SKU that appears twice.
    let mut position: Counts<'_> = ranked
        .iter()
        .zip(0u64..)
        .map(|(sku, i)| (sku.as_str(), i))
        .collect();
    position.sort_unstable();
    position.dedup_by(|later, first| later.0 == first.0);

    let mut cart_orders: Vec<&str> = context
        .purchases
        .iter()
        .filter(|p| in_cart(&p.sku))
        .map(|p| p.order_id.as_str())
        .collect();
    cart_orders.sort_unstable();
    cart_orders.dedup();
    let mut together: Counts<'_> = Vec::new();
    for purchase in &context.purchases {
        let sku = purchase.sku.as_str();
        if cart_orders
            .binary_search(&purchase.order_id.as_str())
            .is_ok()
            && !in_cart(sku)
            && get(&position, sku).is_some()
        {
            bump(&mut together, sku, 1);
        }
    }
    together.sort_by_key(|&(sku, times)| {
        (
            std::cmp::Reverse(times),
            get(&position, sku).unwrap_or(u64::MAX),
        )
    });

    let mut picked: Vec<&str> = Vec::new();
    for sku in together
        .iter()
        .map(|&(sku, _)| sku)
        .chain(ranked.iter().map(String::as_str))
    {
        if picked.len() >= limit {
            break;
        }
        if !in_cart(sku) && !picked.contains(&sku) {
            picked.push(sku);
        }
    }
    picked.into_iter().map(str::to_owned).collect()
}

fn rank(context: &Context) -> Ranking {
    if context.purchases.is_empty() {
        return Ranking::default_order(context);
    }
    let ranked = ranked(context);
    Ranking {
        recommended: recommended(context, &ranked),
        ranked,
    }
}

impl Personalization for AffinityPersonalization {
    fn rank(context: Context) -> Result<Ranking, PluginError> {
        Ok(rank(&context))
    }
}

cartridge_sdk::export_plugin!(personalization, AffinityPersonalization);

#[cfg(test)]
mod tests {
    use super::*;
    use cartridge_sdk::personalization::Money;

    fn candidate(sku: &str, categories: &[&str]) -> Candidate {
        Candidate {
            sku: sku.into(),
            product_id: sku.to_lowercase(),
            title: sku.into(),
            categories: categories.iter().map(|c| (*c).to_owned()).collect(),
            price: Money::new(1999, "EUR"),
            attributes: vec![],
        }
    }

    fn purchase(order_id: &str, sku: &str, categories: &[&str], quantity: u32) -> Purchase {
        Purchase {
            sku: sku.into(),
            product_id: sku.to_lowercase(),
            categories: categories.iter().map(|c| (*c).to_owned()).collect(),
            quantity,
            at: 1_760_000_000_000,
            order_id: order_id.into(),
        }
    }

    /// Shoes, tees, socks, mugs and a candle, in that default order.
    fn context(purchases: Vec<Purchase>, cart: &[&str], limit: u32) -> Context {
        Context {
            customer_id: Some("cus_1".into()),
            customer_tags: vec![],
            purchases,
            cart_skus: cart.iter().map(|s| (*s).to_owned()).collect(),
            candidates: vec![
                candidate("SHOE", &["apparel", "shoes"]),
                candidate("TEE", &["apparel", "shirts"]),
                candidate("SOCK", &["apparel", "socks"]),
                candidate("MUG", &["home", "kitchen"]),
                candidate("CANDLE", &["home"]),
            ],
            limit,
            now: 1_764_000_000_000,
        }
    }

    #[test]
    fn a_shopper_without_purchases_gets_the_default_order() {
        let mut ctx = context(vec![], &["TEE"], 2);
        ctx.customer_id = None;
        let ranking = AffinityPersonalization::rank(ctx.clone()).expect("ranked");
        assert_eq!(ranking, Ranking::default_order(&ctx));
        assert_eq!(ranking.recommended, vec!["SHOE", "TEE"]);
    }

    #[test]
    fn candidates_in_categories_bought_most_come_first() {
        let ctx = context(
            vec![
                purchase("o1", "OLD-MUG", &["home", "kitchen"], 2),
                purchase("o2", "OLD-SOCK", &["apparel", "socks"], 1),
            ],
            &[],
            0,
        );
        // home 2, kitchen 2, apparel 1, socks 1: MUG 4, SOCK 2, CANDLE 2, SHOE 1, TEE 1; SOCK
        // and CANDLE tie, so SOCK stays ahead as in the default order.
        assert_eq!(ranked(&ctx), vec!["MUG", "SOCK", "CANDLE", "SHOE", "TEE"]);
    }

    #[test]
    fn weights_count_units_not_purchases() {
        let ctx = context(
            vec![
                purchase("o1", "OLD-SOCK", &["socks"], 5),
                purchase("o2", "OLD-MUG", &["kitchen"], 1),
                purchase("o3", "OLD-MUG", &["kitchen"], 1),
            ],
            &[],
            0,
        );
        assert_eq!(ranked(&ctx)[..2], ["SOCK", "MUG"]);
    }

    #[test]
    fn ties_and_unknown_categories_keep_the_default_order() {
        let ctx = context(vec![purchase("o1", "X", &["apparel"], 1)], &[], 0);
        assert_eq!(ranked(&ctx), vec!["SHOE", "TEE", "SOCK", "MUG", "CANDLE"]);
    }

    #[test]
    fn a_category_listed_twice_counts_once() {
        let mut ctx = context(vec![purchase("o1", "X", &["home", "home"], 2)], &[], 0);
        ctx.candidates[0].categories = vec!["home".into(), "home".into()];
        let weights = category_weights(&ctx.purchases);
        assert_eq!(get(&weights, "home"), Some(2));
        assert_eq!(affinity(&ctx.candidates[0], &weights), 2);
    }

    #[test]
    fn things_bought_with_what_is_in_the_cart_are_recommended_first() {
        let ctx = context(
            vec![
                purchase("o1", "TEE", &["apparel", "shirts"], 1),
                purchase("o1", "CANDLE", &["home"], 1),
                purchase("o2", "MUG", &["home", "kitchen"], 3),
            ],
            &["TEE"],
            3,
        );
        let ranking = AffinityPersonalization::rank(ctx).expect("ranked");
        assert_eq!(ranking.ranked, vec!["MUG", "CANDLE", "TEE", "SHOE", "SOCK"]);
        // CANDLE was in the same order as TEE; then the top of the ranking, without TEE.
        assert_eq!(ranking.recommended, vec!["CANDLE", "MUG", "SHOE"]);
    }

    #[test]
    fn what_was_bought_together_more_often_comes_first() {
        let ctx = context(
            vec![
                purchase("o1", "TEE", &["apparel"], 1),
                purchase("o1", "SHOE", &["apparel"], 1),
                purchase("o2", "TEE", &["apparel"], 1),
                purchase("o2", "SOCK", &["apparel"], 1),
                purchase("o3", "TEE", &["apparel"], 1),
                purchase("o3", "SOCK", &["apparel"], 1),
            ],
            &["TEE"],
            2,
        );
        assert_eq!(rank(&ctx).recommended, vec!["SOCK", "SHOE"]);
    }

    #[test]
    fn cart_items_and_non_candidates_are_never_recommended() {
        let ctx = context(
            vec![
                purchase("o1", "TEE", &["apparel"], 1),
                purchase("o1", "SOCK", &["apparel"], 1),
                purchase("o1", "DISCONTINUED", &["apparel"], 1),
            ],
            &["TEE", "SOCK"],
            10,
        );
        let recommended = rank(&ctx).recommended;
        assert_eq!(recommended, vec!["SHOE", "MUG", "CANDLE"]);
    }

    #[test]
    fn recommendations_stop_at_the_limit() {
        let ctx = context(vec![purchase("o1", "X", &["home"], 1)], &[], 2);
        assert_eq!(rank(&ctx).recommended, vec!["MUG", "CANDLE"]);
        let none = context(vec![purchase("o1", "X", &["home"], 1)], &[], 0);
        assert!(rank(&none).recommended.is_empty());
    }

    #[test]
    fn every_candidate_is_ranked_exactly_once() {
        let ctx = context(
            vec![
                purchase("o1", "SOCK", &["apparel", "socks"], 2),
                purchase("o2", "MUG", &["home"], 1),
            ],
            &["SOCK"],
            5,
        );
        let mut ranked = rank(&ctx).ranked;
        ranked.sort();
        assert_eq!(ranked, vec!["CANDLE", "MUG", "SHOE", "SOCK", "TEE"]);
    }
}
