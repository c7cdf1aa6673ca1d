//! What the triage recognises: the red flags, each at one of two levels of urgency.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How soon a person should get help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriageLevel {
    /// See a clinician today: a doctor, urgent care or a nurse line.
    Urgent,
    /// Call the local emergency number now.
    Emergency,
}

impl TriageLevel {
    /// The name used in JSON and labelled sets.
    pub fn name(self) -> &'static str {
        match self {
            TriageLevel::Urgent => "urgent",
            TriageLevel::Emergency => "emergency",
        }
    }
}

/// A warning sign the triage recognises in a message. Most are emergencies; a few call for a
/// clinician the same day ([`RedFlag::level`]).
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
    /// Thoughts of suicide or self-harm, stated or implied (a wish to die, a plan).
    SelfHarm,
    /// An overdose or poisoning, named or described by what was taken.
    Poisoning,
    /// A severe allergic reaction: throat or tongue swelling, anaphylaxis.
    Anaphylaxis,
    /// A seizure happening or just happened.
    Seizure,
    /// A baby under 3 months old with a fever.
    InfantFever,
    /// Someone unconscious, unresponsive or not breathing.
    Unresponsive,
    /// A sudden, severe ("worst ever") headache.
    ThunderclapHeadache,
    /// Fever with a stiff neck, light sensitivity or a rash that does not fade under pressure.
    Meningitis,
    /// A head injury with loss of consciousness, vomiting, confusion or drowsiness.
    HeadInjury,
    /// Heavy bleeding or one-sided pain with faintness in pregnancy or just after birth.
    PregnancyBleeding,
    /// A large, deep, chemical or electrical burn, or one on the face or airway.
    SevereBurn,
    /// Sudden loss of sight, or an eye injury that takes it.
    VisionLoss,
    /// Signs of sepsis: an infection or fever with confusion, mottled skin, shaking chills,
    /// fast breathing or no urine.
    Sepsis,
    /// Serious injury: a road collision with someone hurt or trapped, a fall from a height,
    /// drowning, a gunshot, a crush, a possible spinal injury.
    MajorTrauma,
    /// A diabetic with a very low or high sugar and warning signs (confusion, drowsiness,
    /// vomiting, fast deep breathing).
    DiabeticEmergency,
    /// Sudden, severe pain in a testicle (it may be twisted).
    TesticularPain,
    /// Severe abdominal pain: a rigid belly, pain that doubles someone over, with vomiting or
    /// faintness.
    SevereAbdominalPain,
    /// Urgent: fever with a urinary infection (it may have reached the kidneys).
    UrinaryFever,
    /// Urgent: a child not drinking, vomiting everything or with few wet nappies.
    ChildDehydration,
    /// Urgent: chest pain that was mild and has gone.
    ChestPainResolved,
    /// Urgent: a wound, bite or skin infection that is spreading.
    SpreadingInfection,
    /// Urgent: a possible broken bone (cannot bear weight, deformed, heard a crack).
    PossibleFracture,
}

impl RedFlag {
    /// Every flag, emergencies first, in the order messages list them.
    pub const ALL: [RedFlag; 26] = [
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
        RedFlag::ThunderclapHeadache,
        RedFlag::Meningitis,
        RedFlag::HeadInjury,
        RedFlag::PregnancyBleeding,
        RedFlag::SevereBurn,
        RedFlag::VisionLoss,
        RedFlag::Sepsis,
        RedFlag::MajorTrauma,
        RedFlag::DiabeticEmergency,
        RedFlag::TesticularPain,
        RedFlag::SevereAbdominalPain,
        RedFlag::UrinaryFever,
        RedFlag::ChildDehydration,
        RedFlag::ChestPainResolved,
        RedFlag::SpreadingInfection,
        RedFlag::PossibleFracture,
    ];

    /// How soon help is needed.
    pub fn level(self) -> TriageLevel {
        match self {
            RedFlag::UrinaryFever
            | RedFlag::ChildDehydration
            | RedFlag::ChestPainResolved
            | RedFlag::SpreadingInfection
            | RedFlag::PossibleFracture => TriageLevel::Urgent,
            _ => TriageLevel::Emergency,
        }
    }

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
            RedFlag::ThunderclapHeadache => "a sudden, severe headache",
            RedFlag::Meningitis => "signs of meningitis",
            RedFlag::HeadInjury => "a head injury with warning signs",
            RedFlag::PregnancyBleeding => "heavy bleeding or pain in pregnancy",
            RedFlag::SevereBurn => "a serious burn",
            RedFlag::VisionLoss => "sudden loss of vision",
            RedFlag::Sepsis => "possible signs of sepsis",
            RedFlag::MajorTrauma => "a serious injury",
            RedFlag::DiabeticEmergency => "a diabetic emergency",
            RedFlag::TesticularPain => "sudden severe testicle pain",
            RedFlag::SevereAbdominalPain => "severe abdominal pain",
            RedFlag::UrinaryFever => "a fever with a urinary infection",
            RedFlag::ChildDehydration => "a child who is not drinking enough",
            RedFlag::ChestPainResolved => "chest pain that has passed",
            RedFlag::SpreadingInfection => "an infection that is spreading",
            RedFlag::PossibleFracture => "a possible broken bone",
        }
    }

    /// The snake_case name used in JSON and in labelled sets.
    pub fn name(self) -> &'static str {
        match self {
            RedFlag::ChestPain => "chest_pain",
            RedFlag::Stroke => "stroke",
            RedFlag::Breathing => "breathing",
            RedFlag::Bleeding => "bleeding",
            RedFlag::SelfHarm => "self_harm",
            RedFlag::Poisoning => "poisoning",
            RedFlag::Anaphylaxis => "anaphylaxis",
            RedFlag::Seizure => "seizure",
            RedFlag::InfantFever => "infant_fever",
            RedFlag::Unresponsive => "unresponsive",
            RedFlag::ThunderclapHeadache => "thunderclap_headache",
            RedFlag::Meningitis => "meningitis",
            RedFlag::HeadInjury => "head_injury",
            RedFlag::PregnancyBleeding => "pregnancy_bleeding",
            RedFlag::SevereBurn => "severe_burn",
            RedFlag::VisionLoss => "vision_loss",
            RedFlag::Sepsis => "sepsis",
            RedFlag::MajorTrauma => "major_trauma",
            RedFlag::DiabeticEmergency => "diabetic_emergency",
            RedFlag::TesticularPain => "testicular_pain",
            RedFlag::SevereAbdominalPain => "severe_abdominal_pain",
            RedFlag::UrinaryFever => "urinary_fever",
            RedFlag::ChildDehydration => "child_dehydration",
            RedFlag::ChestPainResolved => "chest_pain_resolved",
            RedFlag::SpreadingInfection => "spreading_infection",
            RedFlag::PossibleFracture => "possible_fracture",
        }
    }

    /// The position of this flag in [`RedFlag::ALL`].
    pub fn index(self) -> usize {
        RedFlag::ALL
            .iter()
            .position(|&f| f == self)
            .expect("every flag is in ALL")
    }
}

impl fmt::Display for RedFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`RedFlag::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown red flag {0:?} (known: {known})", known = RedFlag::ALL.map(|f| f.name()).join(", "))]
pub struct UnknownFlag(pub String);

impl FromStr for RedFlag {
    type Err = UnknownFlag;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RedFlag::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFlag(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for flag in RedFlag::ALL {
            assert_eq!(flag.name().parse::<RedFlag>(), Ok(flag));
            assert_eq!(
                serde_json::to_value(flag).unwrap(),
                serde_json::json!(flag.name())
            );
            assert_eq!(RedFlag::ALL[flag.index()], flag);
        }
        assert!(
            "heart"
                .parse::<RedFlag>()
                .unwrap_err()
                .to_string()
                .contains("chest_pain")
        );
    }

    #[test]
    fn emergencies_come_before_urgent_flags() {
        let first_urgent = RedFlag::ALL
            .iter()
            .position(|f| f.level() == TriageLevel::Urgent)
            .unwrap();
        assert!(
            RedFlag::ALL[first_urgent..]
                .iter()
                .all(|f| f.level() == TriageLevel::Urgent)
        );
        assert!(TriageLevel::Emergency > TriageLevel::Urgent);
    }
}
