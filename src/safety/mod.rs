//! The medical safety layer of `chat` and `serve`: red-flag triage of the user's message before
//! the model answers, the emergency routing put before its answer, and the default system prompt
//! that keeps the assistant educational.
//!
//! Triage is deliberately simple and table-tested: a red flag needs a symptom pattern *and* a
//! message about someone's situation (a statement, or a question that says whose: first or
//! second person, a relative, "suddenly", "right now"), so "what is a stroke?" stays a question
//! while "my dad's face is drooping" routes to emergency services. It errs towards routing: a false alarm costs a sentence, a missed one
//! much more. It is not a diagnosis and does not replace the model's disclaimer.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

/// The system prompt used when the user gives none: an educational assistant that does not
/// diagnose or prescribe and points to professionals.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a careful medical information assistant. \
Explain health topics in plain language for education only. Do not diagnose conditions, do not \
prescribe or dose medications, and do not replace a clinician: encourage the user to see a \
doctor or other qualified health professional about their own situation, and to call emergency \
services for anything urgent.";

/// What an emergency message asks the user to do, by kind of red flag.
pub const EMERGENCY_ADVICE: &str = "This may be a medical emergency. Call your local emergency \
number now (911 in the US and Canada, 112 in the EU, 999 in the UK, 000 in Australia) or go to \
the nearest emergency department. Do not wait for an answer from an AI model.";

/// For thoughts of suicide or self-harm.
pub const CRISIS_ADVICE: &str = "If you are thinking about ending your life or harming \
yourself, please reach out now: call or text 988 (Suicide & Crisis Lifeline, US), call 116 123 \
(Samaritans, UK and Ireland), or your local emergency number. You do not have to go through \
this alone.";

/// For poisoning and overdoses.
pub const POISON_ADVICE: &str = "For a poisoning or overdose, call your local emergency number \
now; in the US, Poison Control is 1-800-222-1222.";

/// A kind of emergency the triage recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedFlag {
    /// Chest pain, pressure or tightness (with or without sweating, arm or jaw pain).
    ChestPain,
    /// Face drooping, arm or leg weakness, trouble speaking.
    Stroke,
    /// Severe trouble breathing, blue lips, choking.
    Breathing,
    /// Heavy bleeding, coughing or vomiting blood.
    Bleeding,
    /// Thoughts of suicide or self-harm.
    SelfHarm,
    /// An overdose or poisoning.
    Poisoning,
    /// A severe allergic reaction: throat or tongue swelling, anaphylaxis.
    Anaphylaxis,
    /// A seizure happening or just happened.
    Seizure,
    /// A baby under 3 months old with a fever.
    InfantFever,
    /// Someone unconscious, unresponsive or not breathing.
    Unresponsive,
}

impl RedFlag {
    /// Every red flag, in the order messages list them.
    pub const ALL: [RedFlag; 10] = [
        RedFlag::ChestPain,
        RedFlag::Stroke,
        RedFlag::Breathing,
        RedFlag::Bleeding,
        RedFlag::SelfHarm,
        RedFlag::Poisoning,
        RedFlag::Anaphylaxis,
        RedFlag::Seizure,
        RedFlag::InfantFever,
        RedFlag::Unresponsive,
    ];

    /// A few words for the banner.
    pub fn describe(self) -> &'static str {
        match self {
            RedFlag::ChestPain => "chest pain or pressure",
            RedFlag::Stroke => "signs of a stroke",
            RedFlag::Breathing => "severe trouble breathing",
            RedFlag::Bleeding => "heavy bleeding",
            RedFlag::SelfHarm => "thoughts of suicide or self-harm",
            RedFlag::Poisoning => "an overdose or poisoning",
            RedFlag::Anaphylaxis => "a severe allergic reaction",
            RedFlag::Seizure => "a seizure",
            RedFlag::InfantFever => "a fever in a baby under 3 months",
            RedFlag::Unresponsive => "someone unresponsive or not breathing",
        }
    }

    /// Symptom patterns (case-insensitive, on the lower-cased message).
    fn patterns(self) -> &'static [&'static str] {
        match self {
            RedFlag::ChestPain => &[
                r"\bchest\W+(?:\w+\W+){0,2}?(?:pain|pains|pressure|tightness|tight|hurts?|hurting|aches?|aching|squeez\w*|crush\w*|heavy|heaviness|burning)\b",
                r"\b(?:pain|pressure|tightness|heaviness|squeezing|crushing)\W+(?:\w+\W+){0,3}?(?:in|on|across)\W+(?:my|his|her|the|their)?\W*chest\b",
                r"\bheart attack\b",
            ],
            RedFlag::Stroke => &[
                r"\bface\W+(?:is\W+|has\W+|started\W+|keeps\W+)?(?:droop\w*|drooped|sagging|numb|lopsided)",
                r"\b(?:drooping|droopy|sagging)\W+(?:\w+\W+)?(?:face|mouth|eyelid)",
                r"\b(?:sudden\w*|suddenly)\W+(?:\w+\W+){0,3}?(?:weak\w*|numb\w*|can'?t move|paraly\w*)",
                r"\b(?:arm|leg|side)\W+(?:\w+\W+){0,2}?(?:went|is|feels|has gone|gone)\W+(?:\w+\W+)?(?:weak|numb|limp|dead)\b",
                r"\bslurr\w*\W+(?:\w+\W+)?(?:speech|words|talking)|\bspeech\W+(?:is\W+)?slurred\b",
                r"\b(?:can'?t|cannot|trouble|difficulty)\W+(?:\w+\W+)?(?:speak|speaking|talk|talking|get words out)\b",
                r"\b(?:having|had|is having|think (?:i'?m|he'?s|she'?s|i am|he is|she is) having)\W+(?:a\W+)?stroke\b",
            ],
            RedFlag::Breathing => &[
                r"\b(?:can'?t|cannot|can not|unable to|struggling to|hard to|barely|hardly)\W+(?:\w+\W+)?breath\w*",
                r"\b(?:severe|serious|extreme|really bad)\W+(?:\w+\W+)?(?:shortness of breath|trouble breathing|difficulty breathing|breathlessness)",
                r"\bgasping\b",
                r"\b(?:lips|face|skin)\W+(?:\w+\W+)?(?:turning\W+)?blue\b",
                r"\bchoking\b",
            ],
            RedFlag::Bleeding => &[
                r"\bbleed\w*\W+(?:\w+\W+){0,2}?(?:heavily|a lot|badly|profusely|won'?t stop|will not stop|doesn'?t stop|not stopping|everywhere|nonstop)",
                r"\b(?:heavy|severe|uncontrolled|massive|lots of)\W+bleeding\b",
                r"\b(?:losing|lost)\W+(?:a lot of|lots of|so much)\W+blood\b",
                r"\b(?:coughing|vomiting|throwing) up\W+(?:\w+\W+)?blood\b|\bvomiting blood\b",
                r"\bblood\W+(?:\w+\W+)?everywhere\b",
            ],
            RedFlag::SelfHarm => &[
                r"\b(?:kill|killing|hurt|hurting|harm|harming|cut|cutting)\W+(?:my\s?self|myself)\b",
                r"\b(?:end|ending|take)\W+my\W+(?:own\W+)?life\b",
                r"\bsuicid\w*",
                r"\b(?:want|wanna|wish)\W+(?:\w+\W+)?(?:to die|i was dead|i were dead|to be dead)\b",
                r"\bself[- ]?harm\w*",
                r"\bno (?:reason|point) (?:to|in) (?:live|living)\b|\bbetter off dead\b",
            ],
            RedFlag::Poisoning => &[
                r"\boverdos\w*",
                r"\b(?:took|taken|swallowed|ate|drank|had)\W+(?:\w+\W+){0,2}?(?:too many|too much|a whole|a full|the whole|all (?:of )?(?:my|the|his|her))\W+(?:\w+\W+)?(?:pills|tablets|capsules|bottle|pack|medicine|medication|paracetamol|tylenol|acetaminophen)",
                r"\b(?:swallowed|drank|ate|drinking|ingested)\W+(?:\w+\W+){0,2}?(?:bleach|poison|antifreeze|detergent|battery|batteries|drain cleaner|pesticide|rat poison|lye|cleaning)",
                r"\bpoison(?:ed|ing)\b",
            ],
            RedFlag::Anaphylaxis => &[
                r"\banaphyla\w*",
                r"\bthroat\W+(?:\w+\W+)?(?:is\W+|feels\W+)?(?:closing|swelling|swollen|tight\w*)",
                r"\b(?:tongue|lips|face)\W+(?:\w+\W+)?(?:is\W+|are\W+)?(?:swelling|swollen|swelled)\b",
                r"\b(?:used|use|need|needs|using)\W+(?:\w+\W+)?(?:epipen|epi-pen|epinephrine)",
            ],
            RedFlag::Seizure => &[
                r"\b(?:having|had|has|is having|just had)\W+(?:a\W+|another\W+)?(?:seizure|fit|convulsion)s?\b",
                r"\b(?:seizing|convulsing|fitting)\b",
                r"\bwon'?t stop (?:shaking|jerking)\b",
            ],
            RedFlag::InfantFever => &[
                r"\b(?:newborn|new-born|neonate)\b.*\b(?:fever|temperature|feverish|hot)\b",
                r"\b(?:fever|temperature|feverish)\b.*\bnewborn\b",
            ],
            RedFlag::Unresponsive => &[
                r"\b(?:unconscious|unresponsive|won'?t wake up|will not wake up|can'?t wake (?:him|her|them|up)|not breathing|stopped breathing|no pulse|collapsed)\b",
                r"\bpassed out\W+(?:\w+\W+){0,3}?(?:won'?t|isn'?t|not|can'?t)\W+(?:\w+\W+)?(?:wak\w+|respond\w*)",
            ],
        }
    }
}

/// The emergency message that goes before the model's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emergency {
    /// What was recognised, each once, in [`RedFlag::ALL`] order.
    pub flags: Vec<RedFlag>,
    /// What to do, for the user to read first.
    pub message: String,
}

struct Patterns {
    flags: Vec<(RedFlag, RegexSet)>,
    situation: Regex,
    topic_question: Regex,
    exercise: Regex,
    chest_alarm: Regex,
    infant: Regex,
    infant_age: Regex,
    infant_fever: Regex,
}

fn patterns() -> &'static Patterns {
    static PATTERNS: OnceLock<Patterns> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let build = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("safety pattern {p}: {e}"));
        Patterns {
            flags: RedFlag::ALL
                .iter()
                .map(|&f| {
                    let set = RegexSet::new(f.patterns())
                        .unwrap_or_else(|e| panic!("safety patterns of {f:?}: {e}"));
                    (f, set)
                })
                .collect(),
            // Someone's situation rather than a question about a topic.
            situation: build(
                r"\b(?:i|i'm|im|i've|i'd|i'll|me|my|myself|we|we're|our|us|he|he's|his|him|she|she's|her|they|they're|their|them|you|your|son|daughter|baby|child|kid|husband|wife|partner|mom|mum|mother|dad|father|grandma|grandpa|grandmother|grandfather|brother|sister|friend|someone|somebody|patient|neighbou?r|roommate|now|right now|suddenly|sudden|currently|just|tonight|today|this morning|help)\b",
            ),
            // How a question about a topic starts ("what is a stroke?").
            topic_question: build(
                r"^\W*(?:what|what's|whats|why|how|which|who|when|where|is|are|can|could|does|do|should|would|explain|define|describe|list|tell me about)\b",
            ),
            // A sore chest after training, with nothing alarming besides.
            exercise: build(
                r"\b(?:workout|work out|working out|exercise|exercising|gym|bench|push-?ups?|pull-?ups?|lifting|weights|training|muscles?|sore|stretch\w*|cough\w*|heartburn)\b",
            ),
            chest_alarm: build(
                r"\b(?:sweat\w*|clammy|arm|jaw|neck|back|shoulder|nause\w*|short(?:ness)? of breath|breath\w*|faint\w*|dizz\w*|crush\w*|pressure|squeez\w*|heart attack|spreading|radiat\w*)\b",
            ),
            // Whole words: "son" must not match "person" or "season".
            infant: build(r"\b(?:bab(?:y|ies)|infants?|newborns?|sons?|daughters?|twins)\b"),
            infant_age: build(
                r"\b(\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)[- ](day|days|week|weeks|wk|wks|month|months|mo)[- ]old\b",
            ),
            infant_fever: build(r"\b(?:fever|feverish|temperature|temp|hot|38(?:\.\d)?|100\.\d|101|102|103)\b"),
        }
    })
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

/// A baby younger than 3 months, by an age the message states.
fn under_three_months(text: &str) -> bool {
    patterns().infant_age.captures_iter(text).any(|c| {
        let n = number(&c[1]).unwrap_or(u32::MAX);
        match &c[2] {
            "day" | "days" => n < 92,
            "week" | "weeks" | "wk" | "wks" => n < 13,
            _ => n < 3,
        }
    })
}

/// Red flags in a user's message, or `None` when it reads as a question about a topic.
///
/// ```
/// use medify_qlora::safety::{RedFlag, triage};
/// let e = triage("My dad's face is drooping and he can't lift his arm").unwrap();
/// assert_eq!(e.flags, vec![RedFlag::Stroke]);
/// assert!(e.message.contains("emergency number"));
/// assert!(triage("What is a stroke?").is_none());
/// assert!(triage("my chest workout hurts").is_none());
/// ```
pub fn triage(message: &str) -> Option<Emergency> {
    let text = message.to_lowercase().replace(['’', '‘'], "'");
    let p = patterns();
    // A statement is someone's situation; a question is one only when it says whose.
    if p.topic_question.is_match(&text) && !p.situation.is_match(&text) {
        return None;
    }
    let mut flags: Vec<RedFlag> = p
        .flags
        .iter()
        .filter(|(_, set)| set.is_match(&text))
        .map(|(f, _)| *f)
        .collect();
    // Sore chest muscles after a workout are not an emergency; chest pain with sweating, arm or
    // jaw pain or breathlessness still is.
    if flags.contains(&RedFlag::ChestPain)
        && p.exercise.is_match(&text)
        && !p.chest_alarm.is_match(&text)
    {
        flags.retain(|f| *f != RedFlag::ChestPain);
    }
    if !flags.contains(&RedFlag::InfantFever)
        && p.infant.is_match(&text)
        && under_three_months(&text)
        && p.infant_fever.is_match(&text)
    {
        flags.push(RedFlag::InfantFever);
    }
    if flags.is_empty() {
        return None;
    }
    flags.sort();
    flags.dedup();
    let named: Vec<&str> = flags.iter().map(|f| f.describe()).collect();
    let mut message = format!("You mention {}. {EMERGENCY_ADVICE}", named.join(", "));
    if flags.contains(&RedFlag::Poisoning) {
        message.push(' ');
        message.push_str(POISON_ADVICE);
    }
    if flags.contains(&RedFlag::SelfHarm) {
        message = if flags.len() == 1 {
            CRISIS_ADVICE.to_string()
        } else {
            format!("{message} {CRISIS_ADVICE}")
        };
    }
    Some(Emergency { flags, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages that must route to emergency services, with the flag each must raise.
    const RED_FLAGS: &[(&str, RedFlag)] = &[
        (
            "I have crushing chest pain and I'm sweating",
            RedFlag::ChestPain,
        ),
        (
            "My chest feels tight and the pain is spreading to my left arm",
            RedFlag::ChestPain,
        ),
        (
            "there's pressure in my chest and my jaw hurts",
            RedFlag::ChestPain,
        ),
        (
            "My husband says his chest hurts and he is clammy",
            RedFlag::ChestPain,
        ),
        ("I think I'm having a heart attack", RedFlag::ChestPain),
        (
            "my chest hurts after my workout and I'm short of breath",
            RedFlag::ChestPain,
        ),
        ("My dad's face is drooping on one side", RedFlag::Stroke),
        (
            "Suddenly my left arm went weak and I can't speak properly",
            RedFlag::Stroke,
        ),
        (
            "my mom's speech is slurred and her arm is numb",
            RedFlag::Stroke,
        ),
        ("I think she's having a stroke", RedFlag::Stroke),
        ("I can't breathe", RedFlag::Breathing),
        (
            "My son is struggling to breathe and his lips are turning blue",
            RedFlag::Breathing,
        ),
        ("my baby is gasping", RedFlag::Breathing),
        ("I cut my hand and it's bleeding heavily", RedFlag::Bleeding),
        (
            "the bleeding won't stop, there is blood everywhere",
            RedFlag::Bleeding,
        ),
        ("my father is coughing up blood", RedFlag::Bleeding),
        ("I want to kill myself", RedFlag::SelfHarm),
        ("I've been thinking about ending my life", RedFlag::SelfHarm),
        ("I keep cutting myself", RedFlag::SelfHarm),
        ("I feel suicidal tonight", RedFlag::SelfHarm),
        ("sometimes I wish I was dead", RedFlag::SelfHarm),
        ("I took too many sleeping pills", RedFlag::Poisoning),
        ("my toddler swallowed bleach", RedFlag::Poisoning),
        ("I think my friend overdosed", RedFlag::Poisoning),
        (
            "my throat is closing after I ate peanuts",
            RedFlag::Anaphylaxis,
        ),
        (
            "her tongue is swelling up after a bee sting",
            RedFlag::Anaphylaxis,
        ),
        ("I think I'm going into anaphylaxis", RedFlag::Anaphylaxis),
        ("my daughter is having a seizure", RedFlag::Seizure),
        ("he is convulsing on the floor", RedFlag::Seizure),
        (
            "my 6-week-old baby has a fever of 38.2",
            RedFlag::InfantFever,
        ),
        (
            "My two month old son has a temperature",
            RedFlag::InfantFever,
        ),
        (
            "our 6-week-old twins both have a fever of 38.2",
            RedFlag::InfantFever,
        ),
        (
            "our newborn feels hot and has a fever",
            RedFlag::InfantFever,
        ),
        (
            "my grandpa collapsed and is unresponsive",
            RedFlag::Unresponsive,
        ),
        ("she passed out and won't wake up", RedFlag::Unresponsive),
        ("He’s not breathing!", RedFlag::Unresponsive),
    ];

    /// Questions about topics and everyday complaints that must not trigger.
    const NEAR_MISSES: &[&str] = &[
        "A person with a two-week-old tattoo has a mild fever",
        "What is a stroke?",
        "What are the symptoms of a heart attack?",
        "my chest workout hurts",
        "My chest muscles are sore after bench press",
        "What causes chest pain?",
        "How is anaphylaxis treated?",
        "What are the warning signs of suicide?",
        "What is the normal temperature for a baby?",
        "My 6 month old has a fever",
        "How do seizures happen in epilepsy?",
        "Explain how blood clotting works",
        "What is the recommended dose of ibuprofen for adults?",
        "I have a mild headache and a runny nose",
        "What is diabetes?",
        "How long does a nosebleed usually last?",
        "my knee hurts when I run",
    ];

    #[test]
    fn red_flags_are_recognised() {
        for (message, flag) in RED_FLAGS {
            let e = triage(message).unwrap_or_else(|| panic!("missed: {message:?}"));
            assert!(
                e.flags.contains(flag),
                "{message:?}: {:?}, wanted {flag:?}",
                e.flags
            );
        }
    }

    #[test]
    fn near_misses_do_not_trigger() {
        for message in NEAR_MISSES {
            assert_eq!(triage(message), None, "false alarm: {message:?}");
        }
    }

    #[test]
    fn every_flag_has_a_positive_case_and_its_advice() {
        for flag in RedFlag::ALL {
            assert!(
                RED_FLAGS.iter().any(|(_, f)| *f == flag),
                "{flag:?} has no test phrase"
            );
        }
        let crisis = triage("I want to end my life").unwrap();
        assert!(crisis.message.contains("988"), "{}", crisis.message);
        let poison = triage("my son drank antifreeze").unwrap();
        assert!(poison.message.contains("Poison Control") && poison.message.contains("emergency"));
        let both = triage("I took too many pills because I want to die").unwrap();
        assert_eq!(both.flags, vec![RedFlag::SelfHarm, RedFlag::Poisoning]);
        assert!(both.message.contains("988") && both.message.contains("emergency number"));
    }
}
