//! The context a warning sign is mentioned in: the same words are an emergency in "my dad's face
//! is drooping" and not in "what is a stroke?", "no chest pain", "had a stroke in 2019" or
//! "what should I do if someone has a seizure in the future?". This module normalises a message
//! (case, apostrophes, dropped apostrophes, chat slang, misspelt key words), cuts it into
//! clauses, and says whether a match is negated, in the remote past or hypothetical, and whether
//! the whole message is a question about a topic rather than about someone.

use std::ops::Range;
use std::sync::OnceLock;

use regex::Regex;

/// Words written without their apostrophe, slang and abbreviations, as the patterns expect them.
const REWRITES: &[(&str, &str)] = &[
    ("cant", "can't"),
    ("cannot", "can't"),
    ("dont", "don't"),
    ("doesnt", "doesn't"),
    ("didnt", "didn't"),
    ("wont", "won't"),
    ("isnt", "isn't"),
    ("wasnt", "wasn't"),
    ("arent", "aren't"),
    ("havent", "haven't"),
    ("hasnt", "hasn't"),
    ("couldnt", "couldn't"),
    ("shouldnt", "shouldn't"),
    ("wouldnt", "wouldn't"),
    ("im", "i'm"),
    ("ive", "i've"),
    ("id", "i'd"),
    ("hes", "he's"),
    ("shes", "she's"),
    ("theyre", "they're"),
    ("theres", "there's"),
    ("thats", "that's"),
    ("its", "it's"),
    ("u", "you"),
    ("ur", "your"),
    ("rn", "right now"),
    ("kms", "kill myself"),
    ("unalive", "kill"),
    ("preggo", "pregnant"),
    ("preggers", "pregnant"),
    ("mom", "mum"),
    ("mommy", "mum"),
    ("mummy", "mum"),
    ("nan", "grandma"),
    ("nana", "grandma"),
    ("granny", "grandma"),
    ("gran", "grandma"),
    ("grandad", "grandpa"),
    ("granddad", "grandpa"),
    ("wanna", "want to"),
    ("gonna", "going to"),
    ("gotta", "got to"),
    ("pls", "please"),
    ("plz", "please"),
    ("ppl", "people"),
    ("bc", "because"),
    ("diarrhea", "diarrhoea"),
    ("diaper", "nappy"),
    ("diapers", "nappies"),
    ("wk", "week"),
    ("wks", "weeks"),
    ("mo", "month"),
    ("mos", "months"),
    ("yo", "year old"),
    ("pian", "pain"),
    ("pils", "pills"),
    ("tabs", "tablets"),
];

/// Words that drop their final "g" in chat ("bleedin", "fittin") and are read with it.
const G_DROPPED: &[&str] = &[
    "bleedin",
    "breathin",
    "chokin",
    "convulsin",
    "droopin",
    "dyin",
    "fittin",
    "gaspin",
    "jerkin",
    "seizin",
    "shakin",
    "swellin",
    "vomitin",
    "burnin",
    "cuttin",
    "hurtin",
    "killin",
    "thinkin",
    "passin",
    "throwin",
    "wheezin",
    "slurrin",
];

/// Key words the patterns rely on; a word one typing slip away (two for long words) from one of
/// them, and not itself a word the patterns or everyday English use, is read as it.
const KEY_WORDS: &[&str] = &[
    "breathe",
    "breathing",
    "breath",
    "bleeding",
    "blood",
    "chest",
    "stroke",
    "seizure",
    "seizures",
    "seizing",
    "suicide",
    "suicidal",
    "overdose",
    "overdosed",
    "poisoned",
    "poisoning",
    "swallowed",
    "tablets",
    "paracetamol",
    "tylenol",
    "ibuprofen",
    "unconscious",
    "unresponsive",
    "collapsed",
    "headache",
    "meningitis",
    "pregnant",
    "bleach",
    "allergic",
    "anaphylaxis",
    "swelling",
    "swollen",
    "throat",
    "tongue",
    "vomiting",
    "vomited",
    "convulsing",
    "temperature",
    "fever",
    "newborn",
    "drooping",
    "slurred",
    "slurring",
    "disappear",
    "disappeared",
    "myself",
    "really",
    "sudden",
    "suddenly",
    "worst",
    "emergency",
    "choking",
    "wheezing",
    "burned",
    "scalded",
    "infected",
    "infection",
    "urinate",
    "weight",
    "vision",
    "blind",
    "stiff",
];

/// Everyday words one slip from a key word that a medical corpus lacks (see [`KNOWN_WORDS`]).
const KEEP: &[&str] = &[
    "chess",
    "cheat",
    "crest",
    "breadth",
    "bread",
    "breach",
    "beach",
    "blond",
    "blonde",
    "bloom",
    "bloody",
    "blend",
    "blink",
    "bling",
    "bland",
    "blinds",
    "bleeping",
    "breeding",
    "blending",
    "weigh",
    "weighed",
    "weights",
    "sever",
    "fewer",
    "fevers",
    "stiffs",
    "staff",
    "stuff",
    "sniff",
    "tongues",
    "worse",
    "throats",
    "threat",
    "strokes",
    "stoke",
    "stroked",
    "stork",
    "strike",
    "seize",
    "seized",
    "sizing",
    "allergy",
    "allergies",
    "swallow",
    "swallows",
    "swelled",
    "smelling",
    "spelling",
    "selling",
    "realty",
    "burner",
    "buried",
    "scolded",
    "visions",
    "temperate",
    "cooking",
    "checking",
    "wheeling",
    "infested",
    "dropping",
    "sadden",
    "pregnancy",
];

/// A pattern over lower-cased text with ASCII word classes: Unicode `\w` and `\b` would make
/// the automata of ~150 patterns too large to build and slow to run, and every word the patterns
/// name is ASCII.
fn ascii_words(pattern: &str) -> String {
    pattern
        .replace(r"\b", r"(?-u:\b)")
        .replace(r"\w", "[a-z0-9_]")
        .replace(r"\W", "[^a-z0-9_]")
        .replace(r"\d", "[0-9]")
}

pub(crate) fn regex(pattern: &str) -> Regex {
    let pattern = ascii_words(pattern);
    Regex::new(&pattern).unwrap_or_else(|e| panic!("safety pattern {pattern}: {e}"))
}

/// Whether `a` is at most `max` edits from `b` (insertions, deletions, substitutions and swaps
/// of neighbours: the optimal string alignment distance).
fn within_edits(a: &str, b: &str, max: usize) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > max {
        return false;
    }
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut row = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            row[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(row[j] + 1);
            if i > 0 && j > 0 && a[i - 1] == *cb && b[j - 1] == *ca {
                row[j + 1] = row[j + 1].min(before[j - 1] + 1);
            }
        }
        before = std::mem::replace(&mut prev, row);
    }
    prev[b.len()] <= max
}

/// Real words one slip from a key word, found in the MedQuAD answers
/// (`fixtures/scripts/make_triage_known_words.py`): never mended.
const KNOWN_WORDS: &str = include_str!("known_words.txt");

/// The key word a misspelt `word` stands for, if any.
fn correct(word: &str) -> Option<&'static str> {
    if word.len() < 5
        || KEEP.contains(&word)
        || KEY_WORDS.contains(&word)
        || KNOWN_WORDS.lines().any(|k| k == word)
    {
        return None;
    }
    let max = if word.len() >= 9 { 2 } else { 1 };
    KEY_WORDS
        .iter()
        .copied()
        .filter(|k| k.len() >= 5 && k.as_bytes()[0] == word.as_bytes()[0])
        .find(|k| within_edits(word, k, max))
}

/// The message as the patterns read it: lower case, plain apostrophes, dropped apostrophes
/// restored, slang spelt out, misspelt key words mended, single spaces.
///
/// ```
/// use medify_safety::normalize;
/// assert_eq!(normalize("Im  gonna KMS"), "i'm going to kill myself");
/// assert_eq!(normalize("cant breath, chesst hurts"), "can't breath, chest hurts");
/// ```
pub fn normalize(message: &str) -> String {
    static WORD: OnceLock<Regex> = OnceLock::new();
    let word = WORD.get_or_init(|| regex(r"[a-z']+"));
    let text = message
        .to_lowercase()
        .replace(['\u{2019}', '\u{2018}', '`', '\u{00b4}'], "'")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    // "want 2 die": a 2 between words is "to".
    static TWO: OnceLock<Regex> = OnceLock::new();
    let two = TWO
        .get_or_init(|| regex(r"\b(want|wanna|going|gonna|have|need|got|trying|tryna|about) 2\b"));
    let text = two.replace_all(&text, "$1 to");
    word.replace_all(&text, |c: &regex::Captures| {
        let w = &c[0];
        if G_DROPPED.contains(&w) {
            return format!("{w}g");
        }
        let (base, possessive) = w.strip_suffix("'s").map_or((w, ""), |b| (b, "'s"));
        if let Some((_, to)) = REWRITES.iter().find(|(from, _)| *from == base) {
            return format!("{to}{possessive}");
        }
        correct(w).map_or_else(|| w.to_string(), str::to_string)
    })
    .into_owned()
}

struct Cues {
    clause_break: Regex,
    negation: Regex,
    not_negation: Regex,
    scope_end: Regex,
    past: Regex,
    born: Regex,
    present: Regex,
    hypothetical: Regex,
    generic: Regex,
    topic_question: Regex,
    situation: Regex,
    study: Regex,
}

fn cues() -> &'static Cues {
    static CUES: OnceLock<Cues> = OnceLock::new();
    CUES.get_or_init(|| Cues {
        clause_break: regex(
            r"[.!?;\n]+|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bexcept\b|,?\s*\band now\b|,\s*now\b|,\s*(?:is|are)\s+(?:it|this|that)\b",
        ),
        negation: regex(
            r"\b(?:no|not|never|without|denies|denied|deny|don't|doesn't|didn't|isn't|wasn't|aren't|weren't|haven't|hasn't|hadn't|nor|neither|free of|negative for|ruled out|no longer)\b",
        ),
        not_negation: regex(
            r"\b(?:not sure|not certain|no idea|not only|not just|no one|not long|not even sure|didn't know|don't know|doesn't know|no matter)\b",
        ),
        scope_end: regex(
            r"\b(?:and|so|because|then|which|who|while|after|when|just|only|though|although|except|yet)\b|,\s*(?:i|i'm|i've|he|he's|she|she's|they|we|my|his|her|it's)\b",
        ),
        past: regex(
            r"\b(?:(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|several|few|many|couple of)\s+(?:years?|months?|weeks?)\s+ago|years ago|long ago|last (?:year|month|week|summer|winter|spring|autumn|fall|christmas|easter|time)|in (?:19|20)\d\d|back in|when (?:i|he|she|they|we|you) (?:was|were)|as a (?:child|kid|teen|teenager|baby|toddler|newborn|student)|in the past|history of|used to|previously|once\b.*\bnever|none since|(?:after|since|from|survived|recovering from|recovered from) (?:my|his|her|their|a|an) (?:stroke|heart attack|seizure|overdose|burns?|concussion|miscarriage|cardiac arrest|brain bleed|sepsis|meningitis)|survived|recovered|in recovery|died (?:of|from|by)|passed away|lost (?:my|his|her|our) \w+ to)\b",
        ),
        born: regex(r"\bborn (?:about |only |just )?(?:[\w-]+ ){1,2}ago\b"),
        present: regex(
            r"\b(?:right now|again|today|tonight|this (?:morning|afternoon|evening)|at the moment|currently|just now|now (?:he|she|i|i'm|my|his|her|they|it's|it|is|are|has|have|can't|won't|keeps?|having|getting|severe|really|very|bleeding|vomiting|dizzy|confused|there's)|and now)\b",
        ),
        hypothetical: regex(
            r"\b(?:if|in case|whenever|what happens when|what would happen|should (?:i|you|we) ever)\b",
        ),
        generic: regex(
            r"\b(?:ever|in the future|someone|somebody|a person|people|anyone|anybody|a child|a baby|a patient)\b",
        ),
        // How a question about a topic starts ("what is a stroke?").
        // ("can barely get air in" and "can't breathe" are statements.)
        topic_question: regex(
            r"^\W*(?:(?:what|what's|whats|why|how|which|who|when|where|explain|define|describe|list|tell me about)\b|(?:is|are|can|could|does|do|should|would|will)\s+(\w+))",
        ),
        // Someone's situation rather than a question about a topic.
        situation: regex(
            r"\b(?:i|i'm|i've|i'd|i'll|me|my|myself|we|we're|our|us|he|he's|his|him|she|she's|her|they|they're|their|them|son|daughter|baby|child|kid|husband|wife|partner|mum|mother|dad|father|grandma|grandpa|grandmother|grandfather|brother|sister|friend|someone|somebody|patient|neighbou?r|roommate|flatmate|boyfriend|girlfriend|now|right now|suddenly|currently|just|tonight|today|this morning|help)\b",
        ),
        // Study and writing, not a situation ("for my nursing exam, what are the signs...").
        study: regex(
            r"\b(?:essay|exam|exams|homework|assignment|research|studying|revision|lecture|quiz|textbook|coursework|dissertation|presentation on|teacher asked|writing (?:a|an|my) (?:essay|paper|story|article))\b",
        ),
    })
}

/// A message cut into clauses: the byte ranges between sentence ends and contrast words
/// ("but", "however", "and now").
pub(crate) struct Clauses {
    ranges: Vec<Range<usize>>,
}

impl Clauses {
    pub(crate) fn of(text: &str) -> Clauses {
        let mut ranges = Vec::new();
        let mut start = 0;
        for m in cues().clause_break.find_iter(text) {
            if m.start() > start {
                ranges.push(start..m.start());
            }
            start = m.end();
        }
        if start < text.len() {
            ranges.push(start..text.len());
        }
        Clauses { ranges }
    }

    /// The clause holding byte `at` (a match's start).
    pub(crate) fn around(&self, at: usize) -> Range<usize> {
        self.ranges
            .iter()
            .find(|r| r.contains(&at))
            .cloned()
            .unwrap_or(at..at)
    }
}

/// Whether the words just before `at` in its clause deny what follows ("no chest pain", "she
/// doesn't have any swelling of her lips or tongue"). `window` is how many words may stand
/// between the cue and the match; a conjunction or "just" ends the cue's reach ("I don't sleep
/// and I want to die" is not negated, nor is "hives" in "no swelling, just hives").
pub(crate) fn negated(text: &str, clause: &Range<usize>, at: usize, window: usize) -> bool {
    let before = &text[clause.start..at.max(clause.start)];
    let c = cues();
    let Some(cue) = c
        .negation
        .find_iter(before)
        .filter(|m| {
            !c.not_negation
                .find_iter(before)
                .any(|n| n.start() <= m.start() && m.end() <= n.end())
        })
        .last()
    else {
        return false;
    };
    let between = &before[cue.end()..];
    if c.scope_end.is_match(between) {
        return false;
    }
    between.split_whitespace().count() <= window
}

/// Whether a clause speaks of the remote past ("in 2019", "years ago", "as a child") and not of
/// now ("again", "right now").
pub(crate) fn remote_past(clause: &str) -> bool {
    let c = cues();
    // "born 3 weeks ago" dates a baby, not an event.
    let clause = c.born.replace_all(clause, "");
    c.past.is_match(&clause) && !c.present.is_match(&clause.replace("never again", ""))
}

/// Whether the clause asks about a case that has not happened ("what should I do if someone has a
/// seizure?", "if my child ever swallows …").
pub(crate) fn hypothetical(text: &str, clause: &Range<usize>, at: usize) -> bool {
    let c = cues();
    let before = &text[clause.start..at.max(clause.start)];
    c.hypothetical.is_match(before) && c.generic.is_match(&text[clause.clone()])
}

/// Whether the whole message asks about a topic rather than someone's situation: a question that
/// does not say whose ("what is a stroke?"), or study ("for my exam, …") with nothing happening
/// now.
pub(crate) fn about_a_topic(text: &str) -> bool {
    let c = cues();
    let question = c.topic_question.captures(text).filter(|q| {
        q.get(1).is_none_or(|next| {
            !matches!(
                next.as_str(),
                "barely"
                    | "hardly"
                    | "not"
                    | "only"
                    | "just"
                    | "really"
                    | "still"
                    | "never"
                    | "feel"
            )
        })
    });
    // Whose situation is read after the question's opening ("tell me about", not "me").
    let rest = question.map(|q| {
        let from = q.get(1).or_else(|| q.get(0)).map_or(0, |m| {
            if q.get(1).is_some() {
                m.start()
            } else {
                m.end()
            }
        });
        &text[from..]
    });
    rest.is_some_and(|rest| !c.situation.is_match(rest))
        || (c.study.is_match(text) && !c.present.is_match(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slips_and_slang_are_mended_but_everyday_words_kept() {
        assert_eq!(
            normalize("think im having a strok"),
            "think i'm having a stroke"
        );
        assert_eq!(normalize("fewer wet nappies"), "fewer wet nappies");
        assert_eq!(normalize("hes fittin"), "he's fitting");
        assert_eq!(normalize("i want 2 die"), "i want to die");
        assert_eq!(normalize("chest pian"), "chest pain");
        assert_eq!(normalize("seizur and vomitting"), "seizure and vomiting");
        assert_eq!(normalize("I played chess"), "i played chess");
        assert_eq!(normalize("my mom’s face"), "my mum's face");
        assert_eq!(normalize("worst headche ever"), "worst headache ever");
        assert!(within_edits("strkoe", "stroke", 1));
        assert!(!within_edits("ca", "abc", 1));
        assert_eq!(normalize("he injected heroin"), "he injected heroin");
        assert!(!within_edits("stoke", "stroke", 0));
    }

    #[test]
    fn negation_reaches_a_few_words_and_stops_at_contrast() {
        let t = normalize("I have no chest pain but my arm is numb");
        let cl = Clauses::of(&t);
        let at = t.find("chest").unwrap();
        assert!(negated(&t, &cl.around(at), at, 4));
        let at = t.find("arm").unwrap();
        assert!(!negated(&t, &cl.around(at), at, 4));
        let t = normalize("I don't sleep and I want to die");
        let at = t.find("want").unwrap();
        assert!(!negated(&t, &Clauses::of(&t).around(at), at, 3));
        let t = normalize("I'm not sure, but I think I'm having a stroke");
        let at = t.find("having").unwrap();
        assert!(!negated(&t, &Clauses::of(&t).around(at), at, 4));
        let t = normalize("she doesn't have any swelling of her lips or tongue, just a few hives");
        let cl = Clauses::of(&t);
        let at = t.find("tongue").unwrap();
        assert!(negated(&t, &cl.around(at), at, 7));
        let at = t.find("hives").unwrap();
        assert!(!negated(&t, &cl.around(at), at, 7));
    }

    #[test]
    fn past_present_hypothetical_and_topics() {
        assert!(remote_past("i had a stroke in 2019"));
        assert!(!remote_past(
            "i had a stroke in 2019 and it is happening again"
        ));
        assert!(!remote_past("i had chest pain last night"));
        let t = normalize("what should I do if someone has a seizure in the future?");
        let at = t.find("seizure").unwrap();
        assert!(hypothetical(&t, &Clauses::of(&t).around(at), at));
        let t = normalize("what happens if I took 20 paracetamol");
        let at = t.find("took").unwrap();
        assert!(!hypothetical(&t, &Clauses::of(&t).around(at), at));
        assert!(about_a_topic(&normalize("What is a stroke?")));
        assert!(!about_a_topic(&normalize(
            "What do I do, my son swallowed bleach"
        )));
        assert!(about_a_topic(&normalize(
            "for my nursing exam, what are the signs of meningitis in infants?"
        )));
    }
}
