//! Applying the rules of [`super::patterns`]: a flag is raised when every concept of one of its
//! combinations is mentioned and the context leaves the mention standing (not denied, not in the
//! remote past, not hypothetical: [`super::context`]). Infant fever (an age read as a number) and
//! the chest-pain adjustments are code rather than table.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

use super::context::{Clauses, hypothetical, negated, regex, remote_past};
use super::flags::RedFlag;
use super::patterns::{BEREAVED, CHILD, FEVER, PREGNANT, RULES, expand};

/// A concept as compiled: its expression, and whether it names a state that lasts (being
/// pregnant, being a child, a bereavement), which a past time does not undo ("positive test last
/// week", "died last year and now I want to join him").
struct Concept {
    regex: Regex,
    state: bool,
}

/// The rules compiled once: every distinct concept, and the rules as indices into them.
struct Compiled {
    concepts: Vec<Concept>,
    rules: Vec<(RedFlag, Vec<usize>, Vec<usize>)>,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let mut index: HashMap<&'static str, usize> = HashMap::new();
        let mut concepts: Vec<Concept> = Vec::new();
        let mut id = |p: &'static str| {
            *index.entry(p).or_insert_with(|| {
                concepts.push(Concept {
                    regex: regex(&expand(p)),
                    state: [PREGNANT, CHILD, BEREAVED].contains(&p),
                });
                concepts.len() - 1
            })
        };
        let rules = RULES
            .iter()
            .map(|r| {
                let all = r.all.iter().map(|p| id(p)).collect();
                let none = r.none.iter().map(|p| id(p)).collect();
                (r.flag, all, none)
            })
            .collect();
        Compiled { concepts, rules }
    })
}

/// Whether a concept is mentioned somewhere the context leaves standing: not denied, not in the
/// remote past (unless it is a lasting state), not hypothetical (self-harm always stands).
fn mentioned(concept: &Concept, text: &str, clauses: &Clauses, flag: RedFlag) -> bool {
    // Self-harm and overdoses: a denial must be close ("I'm not going to kill myself").
    let window = match flag {
        RedFlag::SelfHarm | RedFlag::Poisoning => 3,
        _ => 7,
    };
    concept.regex.find_iter(text).any(|m| {
        let clause = clauses.around(m.start());
        !negated(text, &clause, m.start(), window)
            && (concept.state || !remote_past(&text[clause.clone()]))
            && (flag == RedFlag::SelfHarm || !hypothetical(text, &clause, m.start()))
    })
}

/// The flags whose rules hold for the normalised `text` (cut into `clauses`).
pub(crate) fn rule_flags(text: &str, clauses: &Clauses) -> Vec<RedFlag> {
    let c = compiled();
    // One quick test per concept first (each regex finds its literals fast); the context of a
    // match is read only for rules whose every concept is there. (A RegexSet of them all is
    // slower: its lazy DFA is rebuilt for every new message.)
    let present: Vec<bool> = c.concepts.iter().map(|k| k.regex.is_match(text)).collect();
    let mut live: HashMap<(usize, RedFlag), bool> = HashMap::new();
    let mut flags: Vec<RedFlag> = Vec::new();
    for (flag, all, none) in &c.rules {
        if flags.contains(flag)
            || none.iter().any(|&i| present[i])
            || !all.iter().all(|&i| present[i])
        {
            continue;
        }
        let holds = all.iter().all(|&i| {
            *live
                .entry((i, *flag))
                .or_insert_with(|| mentioned(&c.concepts[i], text, clauses, *flag))
        });
        if holds {
            flags.push(*flag);
        }
    }
    flags
}

/// Infant fever: an age under 3 months and a fever, stated anywhere in the message.
pub(crate) fn infant_fever(text: &str, clauses: &Clauses) -> bool {
    struct Infant {
        age: Regex,
        newborn: Regex,
        fever: Regex,
        infant: Regex,
    }
    static INFANT: OnceLock<Infant> = OnceLock::new();
    let p = INFANT.get_or_init(|| Infant {
        age: regex(r"\b(\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|a)[- ]?(day|days|week|weeks|month|months)(?:[- ]old\b(?:\W+(\w+))?| ago\b)"),
        newborn: regex(r"\b(?:newborn|new-born|neonate|new baby)\b"),
        fever: regex(FEVER),
        infant: regex(r"\b(?:bab(?:y|ies)|infants?|newborns?|sons?|daughters?|twins|grandson|granddaughter|boy|girl|nephew|niece)\b"),
    });
    let fever = p.fever.find_iter(text).any(|m| {
        let clause = clauses.around(m.start());
        !negated(text, &clause, m.start(), 7) && !remote_past(&text[clause])
    });
    if !fever {
        return false;
    }
    if p.newborn.is_match(text) {
        return true;
    }
    let person_next = |w: Option<&str>| {
        w.is_none_or(|w| {
            matches!(
                w,
                "has"
                    | "is"
                    | "running"
                    | "with"
                    | "feels"
                    | "seems"
                    | "was"
                    | "had"
                    | "got"
                    | "and"
                    | "baby"
                    | "son"
                    | "daughter"
                    | "boy"
                    | "girl"
                    | "twins"
                    | "grandson"
                    | "granddaughter"
                    | "infant"
                    | "child"
                    | "feverish"
                    | "hot"
                    | "burning"
            )
        })
    };
    p.age.captures_iter(text).any(|c| {
        let n = match &c[1] {
            "a" | "one" => 1,
            w => number(w).unwrap_or(u32::MAX),
        };
        let young = match &c[2] {
            "day" | "days" => n < 92,
            "week" | "weeks" => n < 13,
            _ => n < 3,
        };
        let born_ago =
            c[0].ends_with("ago") && text[..c.get(0).map_or(0, |m| m.start())].contains("born");
        let of_a_child = c[0].contains("old")
            && (p.infant.is_match(text) || person_next(c.get(3).map(|m| m.as_str())));
        young && (born_ago || of_a_child)
    })
}

/// Chest pain after exercise, with a cough, heartburn or known anxiety, with nothing alarming
/// besides, is not an emergency; chest pain that was mild and has gone is urgent, not an
/// emergency.
pub(crate) fn adjust_chest_pain(text: &str, clauses: &Clauses, flags: &mut Vec<RedFlag>) {
    struct Chest {
        benign: Regex,
        alarm: Regex,
        resolved: Regex,
        ongoing: Regex,
    }
    static CHEST: OnceLock<Chest> = OnceLock::new();
    let p = CHEST.get_or_init(|| Chest {
        benign: regex(r"\b(?:workout|work out|working out|exercise|exercising|gym|bench|push-?ups?|pull-?ups?|lifting|weights|training|muscles?|sore|stretch\w*|cough\w*|cold|flu|congest\w*|phlegm|mucus|heartburn|reflux|indigestion|anxious|anxiety|panic attacks?|(?:doctor|gp|cardiologist) (?:\w+ ){0,3}?(?:checked|said|says|told|cleared))\b"),
        alarm: regex(r"\b(?:sweat\w*|clammy|arm|jaw|neck|back|shoulder|nause\w*|short(?:ness)? of breath|breath\w*|faint\w*|dizz\w*|crush\w*|pressure|squeez\w*|heart attack|spreading|radiat\w*)\b"),
        resolved: regex(r"\b(?:went away|goes away|go away|go when|goes when|has gone|it's gone|is gone|now gone|gone now|passed|it stopped|stopped when|settled|resolved|eased|subsided|better now|fine now|ok now|okay now|feels ok|came and went|for a (?:minute|few minutes|bit|moment)|lasted \d+ minutes|for \d+ minutes|brief|twinge|short episode|with rest|when (?:i|he|she) rest\w*|after (?:he|she|i) sat down)\b"),
        ongoing: regex(r"\b(?:sweat\w*|clammy|jaw|short(?:ness)? of breath|can't breathe|faint\w*|nause\w*|vomit\w*|grey|still|again|worse|right now|not going away|hasn't gone|won't go|crush\w*|spreading|radiat\w*|left arm|arm (?:is )?(?:numb|heavy))\b"),
    });
    if !flags.contains(&RedFlag::ChestPain) && !flags.contains(&RedFlag::ChestPainResolved) {
        return;
    }
    if p.benign.is_match(text) && !p.alarm.is_match(text) {
        flags.retain(|f| !matches!(f, RedFlag::ChestPain | RedFlag::ChestPainResolved));
        return;
    }
    let resolved = p.resolved.find_iter(text).any(|m| {
        let clause = clauses.around(m.start());
        !negated(text, &clause, m.start(), 2)
    });
    if resolved && !p.ongoing.is_match(text) {
        flags.retain(|f| *f != RedFlag::ChestPain);
        if !flags.contains(&RedFlag::ChestPainResolved) {
            flags.push(RedFlag::ChestPainResolved);
        }
    } else if flags.contains(&RedFlag::ChestPain) {
        flags.retain(|f| *f != RedFlag::ChestPainResolved);
    }
}

fn number(word: &str) -> Option<u32> {
    let words = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve",
    ];
    word.parse()
        .ok()
        .or_else(|| words.iter().position(|w| *w == word).map(|i| i as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::normalize;

    #[test]
    fn every_rule_compiles_and_every_flag_has_one() {
        let rules = &compiled().rules;
        for flag in RedFlag::ALL {
            assert!(
                flag == RedFlag::InfantFever
                    || flag == RedFlag::ChestPainResolved
                    || rules.iter().any(|r| r.0 == flag),
                "{flag:?} has no rule"
            );
        }
    }

    #[test]
    fn combinations_need_every_part() {
        let f = |t: &str| {
            let text = normalize(t);
            rule_flags(&text, &Clauses::of(&text))
        };
        assert!(f("fever and a stiff neck").contains(&RedFlag::Meningitis));
        assert!(!f("I have a stiff neck from sleeping awkwardly").contains(&RedFlag::Meningitis));
        assert!(!f("no stiff neck, no rash, just a fever").contains(&RedFlag::Meningitis));
        assert!(f("took 30 paracetamol").contains(&RedFlag::Poisoning));
        assert!(!f("took two paracetamol for my headache").contains(&RedFlag::Poisoning));
    }

    #[test]
    fn infant_ages() {
        let f = |t: &str| {
            let text = normalize(t);
            infant_fever(&text, &Clauses::of(&text))
        };
        assert!(f("my 6-week-old has a fever"));
        assert!(f("baby born 3 weeks ago has a temperature"));
        assert!(!f("my 6 month old has a fever"));
        assert!(!f("a person with a two-week-old tattoo has a mild fever"));
        assert!(!f("my 2 month old has a blocked nose but no temperature"));
        assert!(!f("fever for 3 days"));
    }
}
