//! The table tests of the triage, and its targets on the held-out set.

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
    (
        "I suddenly have the worst headache of my life",
        RedFlag::ThunderclapHeadache,
    ),
    (
        "my son has a fever, a stiff neck and a rash that doesn't fade under a glass",
        RedFlag::Meningitis,
    ),
    (
        "she hit her head, was knocked out and now keeps vomiting",
        RedFlag::HeadInjury,
    ),
    (
        "I'm 9 weeks pregnant and bleeding heavily",
        RedFlag::PregnancyBleeding,
    ),
    (
        "my toddler pulled boiling water over his chest, big blisters",
        RedFlag::SevereBurn,
    ),
    (
        "I suddenly can't see out of my right eye",
        RedFlag::VisionLoss,
    ),
    (
        "my mum has a chest infection and is now confused with mottled skin",
        RedFlag::Sepsis,
    ),
    ("burning when I pee and now a fever", RedFlag::UrinaryFever),
    (
        "my toddler has been vomiting and won't drink anything",
        RedFlag::ChildDehydration,
    ),
    (
        "I had a mild chest pain earlier that went away after a few minutes",
        RedFlag::ChestPainResolved,
    ),
    (
        "the redness around the cut is spreading and hot",
        RedFlag::SpreadingInfection,
    ),
    (
        "I fell and can't put any weight on my ankle",
        RedFlag::PossibleFracture,
    ),
    ("my son was knocked down by a car", RedFlag::MajorTrauma),
    (
        "my dad is diabetic, his sugar is 2.0 and he is confused",
        RedFlag::DiabeticEmergency,
    ),
    ("sudden severe pain in my testicle", RedFlag::TesticularPain),
    (
        "the worst stomach pain ever and my belly is rigid",
        RedFlag::SevereAbdominalPain,
    ),
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
    "I had a heart attack five years ago and want to start running",
    "What is meningitis?",
    "I have no chest pain, just a cough",
    "this traffic is killing me",
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

/// The same sign in the contexts triage must read: third persons, lowercase without
/// punctuation, misspellings and slang raise it; denial, the remote past and hypotheticals do not.
#[test]
fn context_changes_the_answer() {
    let raised = [
        ("my dad says he has crushing chest pain", RedFlag::ChestPain),
        ("she cant breath", RedFlag::Breathing),
        ("im gonna kms", RedFlag::SelfHarm),
        ("i swallowed a whole bottle of tylenol", RedFlag::Poisoning),
        ("think my wife is having a strok", RedFlag::Stroke),
        (
            "I had a stroke in 2019 and now my face is drooping again",
            RedFlag::Stroke,
        ),
        ("I don't sleep and I want to die", RedFlag::SelfHarm),
    ];
    for (message, flag) in raised {
        let t = triage(message).unwrap_or_else(|| panic!("missed: {message:?}"));
        assert!(t.flags.contains(&flag), "{message:?}: {:?}", t.flags);
    }
    let quiet = [
        "no chest pain and no trouble breathing",
        "I'm not suicidal, just tired",
        "I had a stroke in 2019, what should I eat?",
        "my son had a seizure when he was a baby, is he at risk now?",
        "what should I do if someone has a seizure in the future?",
        "I'm writing an essay on overdoses, what are the statistics?",
    ];
    for message in quiet {
        assert_eq!(triage(message), None, "false alarm: {message:?}");
    }
}

#[test]
fn urgent_is_a_calmer_level_with_its_own_advice() {
    let t = triage("I have a UTI and now a fever and back pain").unwrap();
    assert_eq!(t.level, TriageLevel::Urgent);
    assert_eq!(t.flags, vec![RedFlag::UrinaryFever]);
    assert!(
        t.message.contains("today") && !t.message.contains("Call your local emergency number now")
    );
    assert!(!t.is_emergency());
    // An emergency outranks an urgent sign in the same message, and names only the emergency.
    let t =
        triage("burning when I pee, a fever, and now I'm confused and shivering uncontrollably")
            .unwrap();
    assert_eq!(t.level, TriageLevel::Emergency);
    assert!(t.flags.contains(&RedFlag::Sepsis));
    assert!(
        !t.message.contains(RedFlag::UrinaryFever.describe()),
        "{}",
        t.message
    );
    // Chest pain that is still there is an emergency, not "resolved".
    let t = triage("my chest pain went away but now it is back and I'm sweating").unwrap();
    assert_eq!(t.flags, vec![RedFlag::ChestPain]);
}

#[test]
fn self_harm_keeps_crisis_lines_by_region() {
    let t = triage("i don't want to be here anymore").unwrap();
    assert_eq!(t.flags, vec![RedFlag::SelfHarm]);
    for line in ["988", "116 123", "13 11 14", "112"] {
        assert!(t.message.contains(line), "{line} missing: {}", t.message);
    }
}

/// The targets of issue 29 on the held-out part of the labelled set, which the classifier never
/// trains on: emergency recall >= 98 % (100 % for self-harm and overdoses), false alarms on
/// near-misses <= 3 %, urgent recall >= 90 %.
#[test]
fn held_out_targets_are_met() {
    let held = held_out_messages();
    let report = evaluate_triage(Triager::standard(), &held);
    assert!(report.unmet_targets().is_empty(), "{}", report.to_table());
}

/// The training part, which the rules were written against, is met too.
#[test]
fn training_targets_are_met() {
    let train = training_messages();
    let report = evaluate_triage(Triager::standard(), &train);
    assert!(report.unmet_targets().is_empty(), "{}", report.to_table());
}

/// The optional classifier only adds flags: whatever the rules raise stays raised.
#[test]
fn the_classifier_adds_to_the_rules() {
    let with = Triager::with_trained_classifier(0.5);
    for message in [
        "I want to kill myself",
        "my chest hurts and I'm sweating",
        "What is a stroke?",
    ] {
        let rules = Triager::rules_only()
            .assess(message)
            .map(|t| t.flags)
            .unwrap_or_default();
        let both = with.assess(message).map(|t| t.flags).unwrap_or_default();
        assert!(
            rules.iter().all(|f| both.contains(f)),
            "{message}: {rules:?} vs {both:?}"
        );
    }
}
