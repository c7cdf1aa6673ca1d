//! The table of rules: for each red flag, the combinations of concepts that raise it. A concept
//! is a regular expression over the normalised message (`\b` and `\w` are read as ASCII, see
//! [`super::context::regex`]); "fever" and "stiff neck" are two concepts, meningitis needs
//! both. [`super::rules`] compiles and applies the table.

use super::flags::RedFlag;

// Concepts shared by several rules.
pub(crate) const FEVER: &str = r"\b(?:fever\w*|feverish|temp|temps|temperature|high temp\w*|burning up|hot to (?:the )?touch|(?:feels?|felt|is|was) (?:really |very |so )?hot|pyrexi\w*|(?:of|is|was|at|reading|around) (?:3[89]|4[01]|10[0-4])(?:\.\d)?|3[89]\.\d|10[0-4]\.\d|3[89] ?(?:c|°c|degrees)|10[0-4] ?(?:f|°f)|running a temp\w*)\b";
pub(crate) const BEREAVED: &str = r"\b(?:died|dead|passed away|passed on|lost (?:him|her|them|my \w+)|heaven|grave|death|funeral|suicide)\b";
const ABDOMEN: &str = r"\b(?:abdom\w*|stomach|belly|tummy|appendix|belly button)\b";
pub(crate) const CHILD: &str = r"\b(?:child|children|kid|kids|son|daughter|toddler|baby|babies|little one|grandson|granddaughter|boy|girl|infant|nephew|niece|\d+ ?(?:year|month)s?[- ]old)\b";
const INJURY: &str = r"\b(?:fell|fall|falls|fallen|falling|tripped|twisted|landed|dropped (?:a|something|the|it) (?:\w+ )?on|slammed|punched|crash\w*|accident|trampoline|bike|skiing|football|rugby|stairs|monkey bars|rolled|injur\w*|kicked)\b";
pub(crate) const PREGNANT: &str = r"\b(?:pregnan\w*|expecting|at \d+ weeks|(?:i'm|i am) \d+ (?:weeks|months)|\d+ weeks? (?:along|gestation)|\d+ (?:months?|weeks?) pregnant|gave birth|had (?:my|the|a|her|our) baby|just delivered|postpartum|post[- ]partum|c-section|caesarean|positive (?:pregnancy )?test|miscarr\w*|ectopic)\b";
const MEDICINE: &str = r"(?:pills?|tablets?|caps|capsules?|meds|medication|medications|medicines?|paracetamol|acetaminophen|tylenol|panadol|ibuprofen|advil|nurofen|aspirin|insulin|oxy\w*|opioids?|opiates?|fentanyl|heroin|morphine|methadone|tramadol|xanax|valium|diazepam|benzos?|antidepressants?|sertraline|citalopram|fluoxetine|amitriptyline|sleeping|co-codamol|codeine|lithium|iron|painkillers?|pain killers|drugs|molly|mdma|ecstasy|cocaine|coke|meth|ketamine|spice|gabapentin|pregabalin|quetiapine|zopiclone|adhd|ritalin|adderall|blood pressure|heart pills|antifreeze|bleach)";
const CHEMICAL: &str = r"(?:bleach|antifreeze|detergent|dishwasher|washing (?:up )?liquid|laundry (?:pod|pods|capsule|capsules|tablet|tablets)|lamp oil|paraffin|kerosene|petrol|gasoline|nail polish remover|acetone|drain cleaner|oven cleaner|pesticide|weed ?killer|rat poison|lye|cleaning (?:product|fluid|spray|liquid)|cleaner|disinfectant|hand sanitii?[sz]er|e-liquid|vape (?:liquid|juice)|button batter(?:y|ies)|batter(?:y|ies)|magnets?|essential oil|white spirit|turpentine|mushrooms?|berries|weed killer|poison\w*)";

/// One way a flag is raised: every `all` concept mentioned, no `none` concept.
pub(crate) struct Rule {
    pub(crate) flag: RedFlag,
    pub(crate) all: &'static [&'static str],
    pub(crate) none: &'static [&'static str],
}

const fn rule(flag: RedFlag, all: &'static [&'static str]) -> Rule {
    Rule {
        flag,
        all,
        none: &[],
    }
}

const fn rule_unless(
    flag: RedFlag,
    all: &'static [&'static str],
    none: &'static [&'static str],
) -> Rule {
    Rule { flag, all, none }
}

use RedFlag::*;

pub(crate) const RULES: &[Rule] = &[
    // Chest pain.
    rule(
        ChestPain,
        &[
            r"\bchest\W+(?:\w+\W+){0,3}?(?:pain|pains|pressure|tightness|tight|hurts?|hurting|hurt|aches?|ached|aching|squeez\w*|crush\w*|heavy|heaviness|burning|killing|discomfort|felt (?:tight|heavy))\b",
        ],
    ),
    rule(
        ChestPain,
        &[
            r"\b(?:pain|pains|pressure|tightness|heaviness|squeezing|crushing|ache|twinge|discomfort)\W+(?:\w+\W+){0,3}?(?:in|on|across|behind)\W+(?:the (?:middle|centre|center|left side|right side|left|right) of\W+)?(?:my\W+|his\W+|her\W+|the\W+|their\W+)?(?:chest|breastbone|sternum)\b",
        ],
    ),
    rule(
        ChestPain,
        &[
            r"\bheart attack\b|\bcardiac (?:pain|arrest)\b|\b(?:my|his|her) heart (?:hurts|is hurting)\b|\bsqueezing (?:my|his|her) heart\b",
        ],
    ),
    rule(
        ChestPain,
        &[
            r"\b(?:clutch|grab|hold|press)\w* (?:his|her|my|their) chest\b|\belephant\b.*\bchest\b|\bchest\b.*\belephant\b|\bchest (?:feels|felt) like (?:a|an|someone|something|it's|there's)\b",
        ],
    ),
    rule(
        ChestPain,
        &[r"\b(?:crushing|squeezing) feeling in (?:my|his|her) chest\b"],
    ),
    // Stroke.
    rule(
        Stroke,
        &[
            r"\bface\W+(?:\w+\W+){0,2}?(?:droop\w*|drooped|sagging|numb|lopsided|weird|tingling)|\b(?:drooping|droopy|sagging|lopsided|crooked)\W+(?:\w+\W+)?(?:face|mouth|smile|eyelid)|\b(?:smile|mouth|face) (?:is |looks |went )?(?:all )?(?:lopsided|crooked|uneven|droop\w*|sagging)",
        ],
    ),
    rule(
        Stroke,
        &[
            r"\b(?:sudden\w*|all of a sudden|out of nowhere)\W+(?:\w+\W+){0,4}?(?:weak\w*|numb\w*|can't move|paraly\w*|can't (?:lift|raise|feel)|lost (?:his|her|my) balance|confus\w*|slurr\w*|can't (?:speak|talk)|speaking nonsense|talking gibberish)",
        ],
    ),
    rule_unless(
        Stroke,
        &[
            r"\b(?:arm|leg|side|hand)\W+(?:\w+\W+){0,2}?(?:went|is|feels|has gone|gone|just)\W+(?:\w+\W+)?(?:weak|numb|limp|dead|dropped)\b|\b(?:can't|unable to) (?:lift|raise|move|feel) (?:my|his|her|the) (?:right |left )?(?:arm|leg|hand|side)\b|\b(?:hand|arm|leg) (?:won't|doesn't) work\b",
        ],
        &[INJURY],
    ),
    rule(
        Stroke,
        &[
            r"\bslurr\w*|\bspeech\W+(?:is\W+)?(?:slurred|funny|weird|strange)\b|\b(?:talking|speaking|speak\w*) (?:gibberish|nonsense)\b|\bwords (?:are |come |coming )?(?:out )?(?:all )?(?:wrong|jumbled|mixed up|garbled)|\bjumbled\b|\bgarbled\b|\bcan't find (?:my|his|her|the) words\b",
        ],
    ),
    rule(
        Stroke,
        &[
            r"\b(?:can't|trouble|difficulty)\W+(?:\w+\W+)?(?:speak|speaking|talk|talking|get (?:his |her |my )?words out)\b",
            r"\b(?:sudden\w*|all of a sudden|face|arm|numb|weak|dizzy|confus\w*|properly|right now)\b",
        ],
    ),
    rule(
        Stroke,
        &[
            r"\bone side of (?:my|his|her|the) (?:face|body)\b|\bcan't smile\b|\bone side (?:of (?:his|her|my) (?:face|body) )?(?:won't|doesn't|can't|isn't) mov\w*|\bdragging (?:his|her|my) (?:leg|foot)\b|\b(?:left|right) side of (?:my|his|her) (?:body|face)\b",
        ],
    ),
    rule(
        Stroke,
        &[
            r"\b(?:having|had|has|is having|think (?:i'm|he's|she's|i am|he is|she is) having|looks like (?:she's|he's|i've) had)\W+(?:a\W+)?(?:mini[- ]?)?stroke\b|\bstroke\b.*\b(?:now|right now|happening)\b",
        ],
    ),
    rule(
        Stroke,
        &[
            r"\bvision (?:went|is|has gone) double\b|\bdouble vision\b",
            r"\b(?:sudden\w*|balance|slurr\w*|dizzy)\b",
        ],
    ),
    // Breathing.
    rule_unless(
        Breathing,
        &[
            r"\b(?:can't|can not|unable to|struggling to|hard to|barely|hardly|trouble|difficulty|fighting)\W+(?:\w+\W+)?(?:breath\w*|get (?:any )?air|catch (?:my|his|her) breath|get air in)\b|\bstruggling for (?:air|breath)\b|\bfighting for (?:every |each )?breath\b|\bgasp\w*|\bsuffocat\w*|\bbreathing through a straw\b",
        ],
        &[r"\b(?:heat|weather|room|air) is suffocating\b|\bbreathtaking\b"],
    ),
    rule(
        Breathing,
        &[
            r"\b(?:severe|serious|extreme|really bad|so)\W+(?:\w+\W+)?(?:short of breath|shortness of breath|trouble breathing|difficulty breathing|breathless\w*)",
        ],
    ),
    rule(
        Breathing,
        &[
            r"\b(?:lips|face|skin|fingers?|mouth)\W+(?:\w+\W+)?(?:is\W+|are\W+|went\W+|turning\W+|going\W+|look\W+|looks\W+)?(?:blue|purple|grey|gray)\b|\bblue (?:around|round) (?:the|his|her) (?:mouth|lips)\b",
        ],
    ),
    rule(
        Breathing,
        &[r"\bchoking\b|\bchoked\b|\bsomething stuck in (?:my|his|her) (?:throat|windpipe)\b"],
    ),
    rule(
        Breathing,
        &[
            r"\basthma attack\b|\b(?:inhaler|pump|puffer)\W+(?:\w+\W+){0,2}?(?:not|isn't|doesn't|does nothing|not helping|no help)\b|\bwheez\w* (?:so |really |very )?bad\w*|\bwheezing so\b",
        ],
    ),
    rule(
        Breathing,
        &[
            r"\bbreathing\W+(?:is\W+)?(?:really\W+|very\W+|so\W+)?(?:fast|laboured|labored|noisy|rapid|shallow)\b|\bribs (?:are )?sucking in\b|\bgrunting\b|\bhigh[- ]pitched (?:noise|sound|whistle)\b|\bstridor\b",
        ],
    ),
    rule(
        Breathing,
        &[
            r"\b(?:can't|unable to) (?:talk|speak|finish (?:a|her|his|my) sentence|speak in full sentences)\b",
            r"\bbreath\w*\b",
        ],
    ),
    // Bleeding.
    rule_unless(
        Bleeding,
        &[
            r"\bbleed\w*\W+(?:\w+\W+){0,2}?(?:heavily|a lot|badly|profusely|won't stop|will not stop|doesn't stop|not stopping|everywhere|nonstop|so much|loads|lots)|\b(?:heavy|severe|uncontrolled|massive|lots of)\W+bleeding\b|\bbleeding (?:for (?:over )?an hour|won't stop|that won't stop)\b|\b(?:won't|doesn't|will not|isn't going to|can't get it to|can't make it) stop bleeding\b",
        ],
        &[r"\b(?:period|periods|menstrua\w*|menses)\b"],
    ),
    rule(
        Bleeding,
        &[
            r"\b(?:period|periods|menstrua\w*)\b",
            r"\bsoak\w* (?:through )?(?:a|one|my) (?:pad|tampon)s? (?:every|an|each) hour\b|\bfaint\w*|\bdizzy\b|\bpassing out\b|\bpassed out\b",
        ],
    ),
    rule(
        Bleeding,
        &[
            r"\b(?:losing|lost)\W+(?:a lot of|lots of|so much|loads of)\W+blood\b|\bblood\W+(?:\w+\W+)?everywhere\b|\b(?:so much|loads of|lots of|a lot of) blood\b|\bgush\w*|\bspurt\w*|\bpumping blood\b|\bblood (?:is |keeps )?(?:pouring|gushing|pumping|spurting)|\bpouring (?:out )?blood\b|\bsoak\w* (?:through )?(?:\w+ )?(?:towels?|bandages?|cloths?|tea towels?|shirt)\b",
        ],
    ),
    rule(
        Bleeding,
        &[
            r"\b(?:coughing|coughed|cough|vomiting|vomited|throwing|threw|puking|puked|spitting|spat|bringing)\W+(?:up\W+)?(?:\w+\W+){0,4}?(?:blood|bright red)\b|\bcoffee grounds\b|\b(?:black|tarry)\W+(?:and tarry\W+)?(?:poo|poop|stool|stools)\b|\b(?:poo|poop|stool|stools)\W+(?:is|are|was|looks|look)\W+(?:black|tarry)\b|\bpassing (?:lots of |a lot of )?blood\b|\bblood (?:from|out of) (?:my|his|her) (?:bottom|back passage|rectum)\b",
        ],
    ),
    rule(
        Bleeding,
        &[
            r"\bstabbed\b|\bgunshot\b|\bshot (?:in|through)\b|\bgash\b|\bsliced\b|\bdeep (?:cut|wound)\b|\bnose\w* (?:has been |is |keeps )?bleeding for\b",
        ],
    ),
    // Self-harm: named, implied (a wish to die), or a plan.
    rule_unless(
        SelfHarm,
        &[
            r"\b(?:kill|killing|hurt|hurting|harm|harming|cut|cutting|burn|burning|starve|starving|hang|hanging|drown|drowning|poison|poisoning|shoot|shooting)\W+(?:my|him|her|them|your|our)\W?(?:self|selves)\b|\bkill myself\b",
        ],
        &[
            r"\b(?:cut|burnt|burned|burn|hurt|scratched|scalded)\W+(?:my\W?self|myself)\W+(?:\w+\W+)?(?:shaving|cooking|chopping|gardening|by accident|accidentally|at work|playing|on the (?:oven|stove|glass|knife|tin|can|iron|kettle|fence))\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:end|ending|take|taking|ended|took)\W+(?:my|his|her|their)\W+(?:own\W+)?life\b|\bsuicid\w*|\bself[- ]?harm\w*|\bend it(?: all)?\b|\bend things\b|\bbetter off (?:dead|without me|gone)\b|\brather be dead\b|\bno (?:reason|point) (?:to|in) (?:live|living|keep living|go on|going on|being alive|carrying on)\b|\b(?:don't|do not|can't) see (?:a|any|the) (?:reason|point) (?:to|in|of) (?:keep )?(?:living|going on|live|life|being alive)\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:want|wanted|wants|wish|wishing|wished|hope|ready)\W+(?:\w+\W+){0,3}?(?:to die|i was dead|i were dead|to be dead|i'd die|i could die|i wasn't alive|i was never born|i'd never been born)\b|\b(?:want|wants|wanted) to die\b|\bjust want to die\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:don't|do not|no longer) want to (?:be here|live|exist|be alive|wake up|go on|carry on)\b|\bnever wake up\b|\bnot wake up (?:tomorrow|again)\b|\b(?:disappear|dissapear) (?:forever|for good)\b|\bwant (?:it|this|everything) (?:all )?to (?:be over|end) (?:for good|forever)\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\bgoodbye (?:letters?|notes?|messages?|texts?)\b|\bsuicide note\b|\b(?:written|wrote|writing) (?:a |my )?(?:will|note) (?:for|to) (?:my|everyone)\b|\bgiving (?:my|his|her|all my) (?:things|stuff|belongings|possessions) away\b|\bgiving away (?:my|his|her|all my) (?:things|stuff|belongings)\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\bplan\w*\W+(?:\w+\W+){0,2}?(?:to|on|how to)\W+(?:end|kill|die|hang|overdose|jump|do it|take (?:my|his|her) life)\b|\b(?:going to|will|about to)\W+(?:jump off|jump from|jump in front|hang|end it|do it tonight|overdose|take all)\b|\bjump (?:off|from|in front of) (?:the|a|my)\b|\b(?:pills|rope|gun) (?:is |are )?(?:ready|saved up|stockpiled)\b|\b(?:got|have|saved|saving|stockpil\w*) (?:\w+ )?(?:pills|tablets) (?:ready|saved|to take)\b|\brope in (?:his|her|my) room\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:looking up|looked up|searching|searched|googl\w*|research\w*|reading about)\W+(?:\w+\W+)?(?:ways|how) to (?:die|kill|end|overdose|hang)\b|\bways to (?:die|kill myself|end it|end my life)\b|\bhow many (?:pills|tablets) (?:would|will|does it take to) (?:kill|be fatal|be lethal)\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:tired|sick) of (?:living|being alive|life|existing)\b|\blife (?:isn't|is not|is no longer|isn't) worth (?:living|it)\b|\bnot worth living\b|\b(?:can't|cannot) (?:go on|do this|take (?:it|this)|cope|keep going)(?: any ?more| like this| anymore)\b|\bi can't go on\b|\b(?:drive|driving|crash|crashing|steer|steering) (?:my|the) car (?:into|off)\b|\bstep in front of (?:a|the) (?:train|bus|car|truck)\b",
        ],
    ),
    // Self-harm: the burden ("better off without me"), the end near ("this is goodbye"), the means
    // ready ("saving up my pills"), the way decided.
    rule(
        SelfHarm,
        &[
            r"\b(?:everyone|everybody|they|family|kids|world|people|he|she)\W+(?:\w+\W+){0,3}?(?:be |is |are )?(?:better off|happier|easier)\W+(?:\w+\W+){0,2}?(?:without me|if i (?:was|were|wasn't|weren't) (?:gone|dead|here|around|alive)|when i'm gone|with me gone)\b|\b(?:nobody|no one|no-one|noone)\W+(?:\w+\W+){0,3}?(?:notice|care|miss me|mind)\W+(?:\w+\W+){0,2}?(?:if|when) i (?:was|were|am|died|die|disappeared|wasn't here|was gone|'m gone)\b|\bi'?m (?:just )?a burden (?:to|on) (?:everyone|everybody|my|them|him|her)\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\bthis is (?:my last (?:message|goodbye|post|night)|goodbye)\b|\bsaying goodbye to (?:everyone|my|you all)\b|\bsaid my goodbyes\b|\bwon't be (?:here|around|alive) (?:tomorrow|much longer|for long|next week)\b|\bnot (?:going to be|gonna be) (?:here|around) (?:tomorrow|much longer|for long)\b|\b(?:tonight|today) is the night\b|\bput (?:my|all my) affairs in order\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:saving|saved|stockpil\w*|hoarding|collecting|stashing|bought|buying|got)\W+(?:up\W+)?(?:\w+\W+){0,2}?(?:pills|tablets|meds|medication|a rope|rope|a gun|razor blades?)\b",
            r"\b(?:tonight|night|end|die|dying|kill|ready|enough to|for when|plan|goodbye|it all|to do it|the right time|take them all|last)\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:decided|know|knows|figured out|worked out|planned|planning|thought about)\W+(?:exactly\W+)?(?:how|when|where)\W+(?:i'?m|i am|i'll|i will|i'd|i would|i could|he'?s|she'?s|he'll|she'll|to)\W+(?:going to\W+)?(?:do it|end it|kill|die)\b|\bhow i'?d do it\b|\bhow (?:i'm|i am) going to do it\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:wish|want|wanting|hope|pray|praying|hoping)\W+(?:\w+\W+){0,2}?(?:i (?:don't|didn't|won't|never) wake up|to not wake up|not to wake up|to never wake up|to sleep forever|to go to sleep forever|i wasn't (?:here|alive|around|born)|i (?:was|were) never born|to not (?:exist|be here|be alive)|to stop existing|to not be alive|i could disappear|to disappear|it (?:all )?to (?:end|stop)(?: forever| for good| permanently)?|everything to (?:end|stop))\b|\bready to (?:die|go|end it)\b|\b(?:only|one) way out\b|\bno way out\b|\bend the pain (?:for good|forever|permanently)\b|\bmake it (?:all )?stop (?:for good|forever|permanently)\b|\bdon't want to (?:be alive|exist) any ?more\b|\b(?:want|wants|wish) to be with (?:my|his|her) (?:late|dead)\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:can't|cannot|couldn't|don't think i can|not sure i can) (?:keep going|keep living|go on|carry on|do this any ?more|take (?:it|this) any ?more|keep doing this)\b",
            r"\b(?:die|dead|end|pills|rope|bridge|jump|kill|gone|goodbye|decided|plan|tonight|over|living|life|anymore|any more)\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:hit|punch|punching|scratch\w*|bang\w*|starv\w*|punish\w*)\W+(?:my\W?self|myself)\b|\bscratch\w* (?:until|till) (?:i|it) bleed\w*\b|\bbanging my head (?:against|on) (?:the )?wall\b|\bbite myself\b|\bbiting myself\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:dark|suicidal) thoughts\b|\bthoughts? (?:about|of) (?:not being (?:here|alive|around)|dying|death|ending (?:it|things|my life)|killing myself|hurting myself)\b|\bthink\w* (?:about|of) (?:dying|death|not being (?:here|alive|around)|ending (?:it|it all|things|my life))\b",
        ],
    ),
    rule(
        SelfHarm,
        &[
            r"\b(?:want|wanna|wish|going|ready|need|longing) to (?:join|be with|see) (?:him|her|them|my \w+)(?: again)?\b",
            BEREAVED,
        ],
    ),
    // Poisoning: named, or described by what and how much was taken.
    rule_unless(
        Poisoning,
        &[
            r"\boverdos\w*|\bod(?:'d|ed|d)\b|\b(?:i|he|she|they|we|has|have|just|think|might|may|probably) od\b|\bpoisoned\b|\bpoisoning\b|\bpoisonous\b|\bcarbon monoxide\b|\bingested\b",
        ],
        &[r"\bpoison (?:ivy|oak)\b|\bfood poisoning\b"],
    ),
    rule(
        Poisoning,
        &[
            r"\b(?:took|taken|had|swallowed|popped|dropped|snorted|smoked|injected|used|drank)\W+(?:\w+\W+){0,3}?(?:a pill|pills|drugs|molly|mdma|ecstasy|e|acid|lsd|ket|ketamine|coke|cocaine|speed|meth|spice|heroin|fentanyl|mushrooms|shrooms|something|a tab|tabs)\b",
            r"\b(?:confus\w*|burning up|overheat\w*|so hot|fitting|seizure|collapsed|unconscious|not making sense|hallucinat\w*|paranoid|chest pain|heart (?:is )?(?:racing|pounding)|can't breathe|barely breathing|vomiting|throwing up|won't wake|unresponsive|jaw clench\w*|twitching|rigid)\b",
        ],
    ),
    rule(
        Poisoning,
        &[
            MEDICINE_TAKEN,
            r"\b(?:\d{2,}|[5-9]|too many|too much|way too|a (?:whole|full|handful|bunch|load|lot|box|bottle|pack|packet|strip)|all (?:of )?(?:my|his|her|their|the|them)|loads|lots|handful|bunch|entire|whole|month'?s?|week'?s?|twice and|double|triple|extra|a fistful|fistful)\b",
        ],
    ),
    rule(Poisoning, &[CHILD_INGESTED]),
    rule(Poisoning, &[CHEMICAL_TAKEN]),
    rule(
        Poisoning,
        &[
            r"\bmix\w* (?:\w+ )?(?:pills|drugs|meds|tablets|medication)\W+(?:and|with)\W+(?:alcohol|booze|drink|drinks|vodka|wine|beer)\b|\b(?:pills|tablets|xanax|benzos|opioids?|painkillers) (?:and|with) (?:a bottle of |a lot of )?(?:alcohol|booze|vodka|wine|whisky|whiskey)\b",
        ],
    ),
    // Anaphylaxis.
    rule(
        Anaphylaxis,
        &[
            r"\banaphyla\w*|\bepi ?pen\w*|\bepi-pen\b|\bepinephrine\b|\badrenaline (?:pen|shot|injector)\b|\bswelling shut\b|\bthroat\W+(?:\w+\W+)?(?:is\W+|feels\W+)?(?:closing|swelling|swollen|tight\w*|thick)\b",
        ],
    ),
    rule(
        Anaphylaxis,
        &[
            r"\b(?:tongue|lips?|face|mouth|eyes?|throat|eyelids?)\W+(?:and \w+\W+)?(?:\w+\W+)?(?:is\W+|are\W+)?(?:swell\w*|swollen|swelled|puff\w*|blew up|blown up|huge)\b|\bswol+en (?:tongue|lips|face|throat)\b|\bface (?:blew|has blown) up\b|\b(?:whole|entire) body (?:is )?swelling\b",
            r"\b(?:ate|eaten|eating|after|sting|stung|allerg\w*|peanuts?|nuts?|shellfish|shrimp|prawns?|crab|sesame|bee|wasp|antibiotic|amoxicillin|penicillin|injection|medicine|swallow\w*|breath\w*|wheez\w*|talk|speak|hoarse|dizzy|faint|fast|hives|cough\w*)\b",
        ],
    ),
    rule(
        Anaphylaxis,
        &[
            r"\b(?:allergic reaction|allergy|allergic|hives|stung|sting)\b",
            r"\b(?:throat|tongue|wheez\w*|can't breathe|breathing|faint|dizzy|swelling|swollen|hoarse|getting worse|worse fast|collapsed|passing out|throwing up|vomiting)\b",
        ],
    ),
    // Seizure.
    rule(
        Seizure,
        &[
            r"\b(?:having|had|has|is having|just had|keeps? having|another)\W+(?:a\W+|another\W+|her first\W+|his first\W+|my first\W+(?:ever\W+)?)?(?:seizure|fit|convulsion|febrile seizure)s?\b|\bseizing\b|\bconvuls\w*|\bfitting\b|\bseizures? one after another\b",
        ],
    ),
    rule(
        Seizure,
        &[
            r"\b(?:shaking|jerking|twitching|convulsing)\W+(?:all over|uncontrollably|rhythmically|and (?:not responding|staring|unresponsive))\b|\b(?:arms|legs|body|limbs)\W+(?:and \w+\W+)?(?:are\W+|is\W+|started\W+|keep\W+|keeps\W+)?(?:jerking|shaking|twitching)\b|\beyes rolled (?:back|up)\b|\bfoaming at the mouth\b|\b(?:went|gone|goes) (?:all )?stiff (?:and|then)\b|\bstarted jerking\b|\bwon't stop (?:shaking|jerking)\b",
        ],
    ),
    // Unresponsive.
    rule_unless(
        Unresponsive,
        &[
            r"\b(?:unconscious|unresponsive|won't wake up|will not wake up|won't wake|can't wake (?:him|her|them|up)|can't wake (?:him|her|them) up|not breathing|isn't breathing|stopped breathing|no pulse|collapsed|not responding|isn't responding|not moving|isn't moving|out cold|knocked out|hasn't come (?:round|around|to)|not come round|limp and|floppy and (?:not|blue)|blue and floppy|no response|eyes open but (?:nothing|not))\b|\bpassed out\W+(?:\w+\W+){0,3}?(?:won't|isn't|not|can't)\W+(?:\w+\W+)?(?:wak\w+|respond\w*)",
        ],
        &[
            r"\bi (?:\w+ )?stopped breathing\b|\bfor a (?:second|moment|sec)\b|\bat night\b|\bin (?:my|his|her) sleep\b",
        ],
    ),
    // Thunderclap headache.
    rule(
        ThunderclapHeadache,
        &[
            r"\bthunderclap\b|\bworst (?:\w+ ){0,2}?head\w*\b|\bworse head\w* (?:i've |i have )?ever\b|\bhead\w* (?:\w+ ){0,4}?(?:of (?:my|his|her) life|i've ever had|i have ever had|he's ever had|she's ever had|ever had|ever felt|like a bomb|like an explosion|like being hit|like a thunderclap|like (?:it's|its) splitting)|\bnever had (?:a |any )?(?:headache|pain) (?:this|that|like this)\b|\b(?:head|headache) (?:suddenly )?exploded\b",
        ],
    ),
    rule(
        ThunderclapHeadache,
        &[
            r"\b(?:sudden\w*|out of nowhere|all at once|instantly|in seconds|came on (?:like|in|all)|hit me|explosive|exploded|blinding)\b",
            r"\bhead\w*\b",
            r"\b(?:worst|never|terrible|severe|agonis\w*|agoniz\w*|excruciat\w*|explosive|exploded|blinding|bomb|10 out of 10|10/10|splitting|horrible|unbearable|bat|thunderclap|intense|the most)\b",
        ],
    ),
    rule(
        ThunderclapHeadache,
        &[
            r"\bworst (?:pain|thing) (?:[\w']+ ){0,3}?(?:ever|of (?:my|his|her) life)\b",
            r"\bhead\w*\b",
        ],
    ),
    // Meningitis.
    rule(
        Meningitis,
        &[r"\bmeningitis\b|\bmeningococcal\b|\bnon[- ]?blanch\w*"],
    ),
    rule(
        Meningitis,
        &[
            r"\b(?:rash|spots|dots|blotch\w*|pin ?pricks?|marks)\b",
            r"\b(?:doesn't|does not|don't|do not|won't|didn't|isn't|not|dont) (?:\w+ ){0,2}?(?:fade|fading|blanch\w*|disappear|go away|go)\b|\bglass test\b|\bunder (?:a|the) glass\b|\bpress\w* (?:a|the) glass\b|\bpurple\b|\blike bruises\b",
        ],
    ),
    rule(
        Meningitis,
        &[
            FEVER,
            r"\bstiff (?:neck|necked)\b|\bneck (?:is |feels )?(?:so |really |very )?stiff\w*|\bneck stiffness\b|\bcan't (?:bend|move|touch) (?:my|his|her) (?:neck|chin)\b|\bchin to (?:my|his|her) chest\b|\bneck hurts to move\b",
        ],
    ),
    rule(
        Meningitis,
        &[
            FEVER,
            r"\blight (?:hurts|bothers)\b|\b(?:hates|can't stand|can't bear|can't look at|avoiding) (?:the )?light\b|\bsensitive to light\b|\bphotophobi\w*",
        ],
    ),
    rule(
        Meningitis,
        &[
            FEVER,
            r"\b(?:rash|spots|blotch\w*)\b",
            r"\bhard to wake\b|\bwon't wake\b|\bdrowsy\b|\bfloppy\b|\bvery sleepy\b|\bconfus\w*",
        ],
    ),
    rule(
        Meningitis,
        &[
            FEVER,
            r"\bbulging (?:soft spot|fontanelle)\b|\b(?:soft spot|fontanelle) (?:is )?bulging\b",
        ],
    ),
    // Head injury with warning signs.
    rule(
        HeadInjury,
        &[
            r"\b(?:hit|hits|banged|bumped|bashed|smacked|cracked|knocked|struck|whacked)\W+(?:\w+\W+){0,3}?(?:head|skull)\b|\bhead (?:injury|trauma|knock|wound)\b|\b(?:landed|fell|falling|fallen) (?:\w+ ){0,3}?(?:on|onto) (?:his|her|my|their|the) head\b|\bonto (?:his|her|my) head\b|\bknocked (?:out|unconscious)\b|\bconcussion\b|\bhit in the head\b",
            r"\b(?:knocked|was|got|went|been) (?:out|unconscious)\b|\blost consciousness\b|\bloss of consciousness\b|\bblack\w* out\b|\bpassed out\b|\bout cold\b|\bunconscious\b|\bvomit\w*|\bthrow\w* up\b|\bthrew up\b|\bpuk\w*|\bconfus\w*|\bdrowsy\b|\b(?:really |very )?sleepy\b|\btrouble staying awake\b|\bcan't stay awake\b|\b(?:can't|doesn't|don't|not) remember\b|\brepeating (?:him|her|my)self\b|\bacting (?:strange|weird|odd|funny)\b|\bslurr\w*|\bclear fluid\b|\bfluid (?:from|out of|coming out of)\b|\bpupil\w*\b|\bdent\b|\bseizure\b|\bgetting worse\b|\bblurr\w*|\bdouble vision\b|\bwarfarin\b|\bblood thinners?\b|\bdizzy and sick\b",
        ],
    ),
    rule(
        HeadInjury,
        &[
            r"\b(?:fell|fall|fallen|crash\w*|accident|hit|knocked|punched|tackled|collided)\b",
            r"\b(?:blacked out|knocked out|lost consciousness|was unconscious|been unconscious|knocked unconscious|out cold|one pupil|pupils? (?:are |is )?(?:different|uneven|unequal))\b",
        ],
    ),
    // Pregnancy.
    rule(
        PregnancyBleeding,
        &[PREGNANT, r"\bbleed\w*|\bblood\b|\bclots?\b|\bsoak\w*"],
    ),
    rule(
        PregnancyBleeding,
        &[
            PREGNANT,
            r"\b(?:one[- ]sided|one side|left side|right side|sharp|severe|constant|bad) (?:\w+ )?pain\b|\bshoulder tip pain\b|\bbelly is hard\b|\bpain on (?:my|her|one) (?:left |right )?side\b",
            r"\b(?:faint\w*|dizzy|passed out|collaps\w*|bleed\w*|blood|shoulder tip)\b",
        ],
    ),
    // Burns.
    rule_unless(
        SevereBurn,
        &[
            r"\bburns?\b|\bburned\b|\bburnt\b|\bscald\w*|\bcaught fire\b|\bon fire\b|\bfire\b|\bboiling\b|\bhot (?:oil|fat|water|tea|coffee|sugar)\b|\bsteam\b|\bfirework\b|\bacid (?:splash\w*|burn\w*|on (?:my|his|her))\b|\bchemical burn\b|\bsplashed\b",
            r"\b(?:badly|severe\w*|serious\w*|deep|huge|big|large|all over|whole|most of|covering|both (?:legs|arms|hands)|charred|black|white|leathery|doesn't hurt|peeling|face|chest|airway|voice|hoarse|coughing|chemical|acid|drain cleaner|burning through|blister\w* (?:all over|everywhere)|blistering|really bad|so bad)\b",
        ],
        &[r"\bsunburn\w*\b|\bheartburn\b"],
    ),
    rule(
        SevereBurn,
        &[r"\belectrocut\w*|\belectric(?:al)? shock\b|\blive wire\b|\bstruck by lightning\b"],
    ),
    // Vision.
    rule(
        VisionLoss,
        &[
            r"\b(?:can't|cannot) see\b|\b(?:vision|sight) loss\b|\bloss of (?:vision|sight)\b|\blost (?:\w+ ){0,2}(?:vision|sight)\b|\bwent (?:blind|black|dark)\b|\bgone (?:blind|black|dark|grey)\b|\bblind\b|\bblindness\b|\b(?:vision|sight|eyesight)\W+(?:\w+\W+){0,2}?(?:went|gone|disappeared|blacked out|dark|black|grey|gray)\b|\beverything went dark\b",
            r"\b(?:sudden\w*|out of nowhere|all of a sudden|just|this morning|an hour ago|woke up|eye|eyes|hasn't come back|came back|one side)\b",
        ],
    ),
    rule(
        VisionLoss,
        &[
            r"\bcurtain (?:came down|over|across|coming)\b|\bshadow (?:spreading|blocking|across|over|coming)\b|\bdark shadow\b|\bblack veil\b|\bnew floaters\b|\bfloaters and flashes\b|\bflashes and (?:new )?floaters\b|\b(?:loads|lots|shower) of (?:new )?floaters\b",
        ],
    ),
    rule(
        VisionLoss,
        &[
            r"\b(?:bleach|chemical|acid|metal|glass|cleaner|oven cleaner)\W+(?:\w+\W+){0,2}?in(?:to)? (?:my|his|her|their) eyes?\b|\b(?:hit|poked|stabbed) in the eye\b|\bflew into (?:my|his|her) eye\b",
            r"\b(?:can't see|vision|blurr\w*|sight|blind|pain\w*)\b",
        ],
    ),
    rule(
        VisionLoss,
        &[
            r"\beyes? (?:is |are )?(?:extremely |very |really |so )?(?:painful|sore) and red\b|\bred and painful eye\b",
            r"\b(?:halos?|blurr\w*|vomit\w*|sick|nause\w*|can't see)\b",
        ],
    ),
    // Sepsis.
    rule(Sepsis, &[r"\bsepsis\b|\bseptic\b"]),
    rule(
        Sepsis,
        &[
            r"\b(?:infect\w*|uti|flu|pneumonia|cellulitis|wound|operation|surgery|c-section|abscess|chest infection|kidney infection)\b|\b(?:fever\w*|temp|temps|temperature|high temp\w*|feverish|chills)\b",
            r"\bconfus\w*|\bnot making sense\b|\bmottled\b|\bblotchy\b|\bblue-?ish\b|\b(?:shiver\w*|shak\w*) (?:uncontrollabl\w*|chills)\b|\buncontrollabl\w* shiver\w*|\bextreme (?:shivering|shaking)\b|\brigou?rs\b|\bhaven't (?:peed|urinated|weed)\b|\bno (?:pee|urine|wee)\b|\bnot peed\b|\bbreathing (?:really |very |so )?fast\b|\bbreathless\b|\bheart (?:is )?(?:racing|pounding)\b|\bracing heart\b|\bfast heart\w*|\bfeel like (?:i'm|i am) (?:going to )?(?:die|dying)\b|\bsomething is (?:really )?wrong\b|\bslurr\w*|\bice cold\b|\bcold (?:hands|feet|and clammy)\b|\blethargic\b|\bfloppy\b|\bvery drowsy\b|\bdrowsy\b|\bcan barely stand\b|\bblood pressure is (?:really |very )?low\b|\blow blood pressure\b|\bvery pale\b|\b(?:really|very|extremely) unwell\b|\bfreezing\b|\bfeel terrible\b|\bfeeling awful\b",
        ],
    ),
    // Serious injury.
    rule(
        MajorTrauma,
        &[
            r"\b(?:car|motorbike|motorcycle|bike|bus|lorry|truck|van|train)\W+(?:\w+\W+){0,2}?(?:crash\w*|accident|collision|rolled|overturned)\b|\bhead-on\b|\bcollision\b|\brolled over\b|\bpile-?up\b",
            r"\b(?:trapped|stuck|bleeding|hurt|injured|can't move|unconscious|not moving|badly|screaming|pinned|flew|thrown)\b",
        ],
    ),
    rule_unless(
        MajorTrauma,
        &[
            r"\b(?:hit|struck|knocked down|knocked over|run over|ran over|went under|dragged)\W+(?:\w+\W+){0,2}?(?:car|bus|lorry|truck|van|train|motorbike|vehicle|tram)\b|\b(?:got|been|was|is) run over\b",
        ],
        &[r"\bfeels? like (?:i|i've|i'd|he|she)\W+(?:\w+\W+)?(?:got|been|was) (?:hit|run over)\b"],
    ),
    rule(
        MajorTrauma,
        &[
            r"\b(?:fell|fallen|falling|fall|jumped|thrown)\W+(?:\w+\W+){0,2}?(?:from|off|out of)\W+(?:\w+\W+){0,1}?(?:roof|window|balcony|scaffolding|cliff|bridge|second floor|first floor|third floor|building|height|loft|crane|horse)\b|\b\d+ (?:metres|meters|feet|ft|storeys|stories)\b",
        ],
    ),
    rule(
        MajorTrauma,
        &[
            r"\b(?:fell|fallen|fall|landed)\b",
            r"\bcan't (?:feel|move) (?:my|his|her|their) (?:legs|arms|body)\b|\bonto (?:his|her|my) (?:back|neck)\b|\bisn't moving\b|\bnot moving\b|\blying at the bottom\b",
        ],
    ),
    rule_unless(
        MajorTrauma,
        &[
            r"\bdrown\w*|\bnearly drowned\b|\bunder(?:water)? for (?:a|about|over|\d)\b|\bface down in (?:the )?(?:water|pool|pond|bath|river)\b|\bfell in(?:to)? (?:the |a )?(?:pond|pool|river|lake|canal|sea|water)\b|\bpulled (?:\w+ ){0,2}out of the (?:pool|water|river|sea|lake|pond)\b",
        ],
        &[
            r"\b(?:is|are|seems|was) (?:fine|ok|okay|alright) now\b|\bgot out by (?:him|her|them|my)sel(?:f|ves)\b|\bdrowning in (?:\w+ )?(?:paperwork|work|debt|emails|bills|homework|assignments|tasks|sorrow|tears|stress|admin)\b",
        ],
    ),
    rule(
        MajorTrauma,
        &[
            r"\b(?:got|been|was|were|is|he's|she's) shot\b|\bgunshot\b|\bshot (?:in|through) (?:the|his|her|my)\b|\bcrushed\b|\bpinned under\b|\bdived into (?:the )?shallow\b|\bdiving into (?:the )?shallow\b",
        ],
    ),
    // Diabetic emergencies.
    rule(
        DiabeticEmergency,
        &[
            r"\b(?:diabet\w*|type 1|type one|t1d|insulin|blood sugar|blood glucose|glucose|sugar (?:is|was|level|levels|reading|of|crashed|dropped)|sugars|ketones?|ketone strip|hypo|hypos|dka|bg)\b",
            r"\bconfus\w*|\bnot making sense\b|\bdrowsy\b|\bsleepy\b|\bunconscious\b|\bcollapsed\b|\bnot responding\b|\bunresponsive\b|\bseizure\b|\bfit\b|\bslurr\w*|\bacting drunk\b|\bvomit\w*|\bthrowing up\b|\bthrew up\b|\bbreathing (?:deep|fast|deep and fast|really fast)\b|\bfruity\b|\bpass out\b|\bfaint\w*|\bcan't (?:talk|keep)\b|\bsweaty\b|\bshaking\b|\bpale\b|\bwon't eat\b|\bdying\b|\bfeel awful\b|\bcan't talk properly\b",
        ],
    ),
    // Testicle.
    rule(
        TesticularPain,
        &[
            r"\b(?:testic\w*|testes|testis|balls|nut|scrot\w*|private parts)\b",
            r"\bpain\w*|\bhurts?\b|\bache\b|\bagony\b|\btender\b|\bsore\b|\bscreaming\b|\btwisted\b|\btorsion\b|\bswollen\b",
            r"\b(?:sudden\w*|severe|agonis\w*|excruciat\w*|terrible|unbearable|intense|really badly|bad pain|badly|woke up with|out of nowhere|twisted|torsion|swollen|higher than|sitting high|screaming|vomiting|throwing up|sick|worse|sweating|pale)\b",
        ],
    ),
    // Abdomen: a strong word alone, or a weaker one with a warning sign.
    rule(
        SevereAbdominalPain,
        &[
            ABDOMEN,
            r"\b(?:severe|agonis\w*|excruciat\w*|unbearable|worst|doubled over|rolling (?:around )?on the floor|can't (?:stand|move|walk)|curled up|screaming|rigid|hard as a board|tearing|burst)\b|\b(?:belly|stomach|tummy) is (?:hard|rigid|swollen and hard)\b",
        ],
    ),
    rule_unless(
        SevereAbdominalPain,
        &[
            ABDOMEN,
            r"\b(?:terrible|awful|intense|stabbing|so bad|really bad|hurts so)\b",
            r"\bvomit\w*|\bthrowing up\b|\bfaint\w*|\bdizzy\b|\bpale\b|\bsweaty\b|\bfever\b|\bblood\b|\b(?:to|through to|into) (?:my|his|her) back\b|\bcan't\b|\bswollen\b|\bgetting worse\b|\bfor (?:\d+|several|many) hours\b",
        ],
        &[r"\bheartburn\b|\bperiod\b"],
    ),
    // Urgent: urinary infection with fever or loin pain.
    rule(
        UrinaryFever,
        &[
            r"\buti\b|\buti's\b|\burine infection\b|\burinary (?:tract )?infection\b|\bbladder infection\b|\bkidney infection\b|\bcystitis\b|\b(?:burn\w*|sting\w*|hurts?|pain\w*)\W+(?:\w+\W+){0,2}?(?:pee|peeing|wee|wees|weeing|urinat\w*|urine)\b|\b(?:pee|peeing|urinat\w*|urine|weeing)\W+(?:\w+\W+){0,2}?(?:burn\w*|sting\w*|hurts?|painful)\b|\bpainful (?:peeing|urination|urinating)\b|\bcloudy (?:smelly )?(?:pee|urine)\b|\bblood in (?:my |his |her )?(?:urine|pee)\b|\b(?:pee|urinate|wee)\w* (?:all the time|constantly)\b|\bneeding to pee\b",
            r"\b(?:fever\w*|temp|temps|temperature|high temp\w*|feverish|chills|shivery|running a temp|of (?:3[89]|4[01]|10[0-4])(?:\.\d)?)\b|\bflank\b|\bkidneys?\b|\b(?:lower )?back pain\b|\bpain in (?:my|his|her) (?:side|back)\b|\bside under (?:my|his|her) ribs\b",
        ],
    ),
    // Urgent: a child getting dehydrated.
    rule(
        ChildDehydration,
        &[
            CHILD,
            r"\b(?:won't|will not|refus\w*|not|isn't|barely|hardly|stopped)\W+(?:\w+\W+){0,1}?(?:drink\w*|feed\w*|take (?:any )?(?:water|fluids|sips|milk|bottle))\b|\bcan't keep (?:any )?(?:fluids?|water|anything|drinks?|milk) down\b|\b(?:no|fewer|few|only(?: \w+){1,2}|not had a|hasn't had a) (?:wet )?(?:nappies|nappy|wees)\b|\bnappy (?:for|since)\b|\bhasn't (?:peed|weed|had a wee)\b|\bnot peed\b|\bpeeing less\b|\bdry (?:mouth|lips)\b|\blips are dry\b|\bno tears\b|\bsunken\b|\bthrowing up everything\b|\bvomiting (?:all day|everything)\b|\bsick \d+ times\b|\bfeeding (?:much )?less\b|\brefus\w* (?:feeds|(?:her|his|the) bottle)\b|\bwon't take (?:any )?water\b",
        ],
    ),
    // Urgent: a possible broken bone.
    rule(
        PossibleFracture,
        &[
            r"\bcan't put it down\b|\bcan't (?:walk on it|stand up|stand on it)\b|\bwon't (?:move|use) (?:it|his|her)\b|\bcan't (?:move|lift) (?:it|my arm|his arm|her arm|my leg)\b|\b(?:looks|is|looking|pointing|now) (?:bent|deformed|crooked|the wrong way|wonky|out of place)\b|\bdeformed\b|\bcrooked\b|\b(?:heard|felt) a (?:crack|snap|pop)\b|\bheard a snap\b|\bsunken and swollen\b|\b(?:collarbone|bone) has a (?:lump|bump)\b|\bswollen like a balloon\b|\bknee is huge\b|\b(?:swollen|tender) and (?:really |very )?(?:painful|bruised|tender|swollen)\b|\breally swollen\b|\bhurts so much (?:i|he|she) can't move\b",
            INJURY,
        ],
    ),
    rule(
        PossibleFracture,
        &[
            r"\b(?:can't|unable to|won't) (?:put|bear|take) (?:any )?weight\b|\b(?:broke|broken|fractured?|break)\W+(?:my\W+|his\W+|her\W+|a\W+|the\W+)?(?:arm|leg|wrist|ankle|toe|finger|hand|foot|hip|rib|ribs|collarbone|nose|elbow|knee|shoulder|bone|thumb|jaw|shin)\b|\b(?:arm|leg|wrist|ankle|toe|finger|hand|foot|hip|rib|collarbone|elbow|knee|shoulder|thumb) (?:is|might be|could be|may be|looks) (?:broken|fractured)\b",
        ],
    ),
    // Urgent: spreading infection, infected wounds and bites.
    rule(
        SpreadingInfection,
        &[
            r"\bspreading\b|\bspread (?:past|up|down|to|beyond)\b|\bhas spread\b|\bgetting (?:bigger|larger|worse)\b|\bkeeps? (?:growing|getting bigger)\b|\bred (?:streak|line)s?\b|\bstreak\w* (?:going )?up\b|\bpus\b|\booz\w*|\bleaking (?:yellow|green|pus)\b|\binfected\b|\bhot to (?:the )?touch\b|\bthrobbing\b|\bsmells\b|\babscess\b|\bboil\b|\bcellulitis\b|\bopening up\b",
            r"\b(?:red\w*|swell\w*|swollen|wound|cut|bite|tattoo|piercing|skin|leg|arm|hand|finger|toe|toenail|ulcer|stitches|incision|boil|abscess|cellulitis|eyelid|calf|shin|redness|warm)\b",
        ],
    ),
    rule(
        SpreadingInfection,
        &[
            r"\b(?:dog|cat|animal|human|fox|bat|monkey|horse|rat|spider|tick|ferret|hamster)\W+(?:\w+\W+){0,2}?(?:bit|bite|bitten)\b|\bbitten by (?:a|the|our|my)\b",
            r"\b(?:broke the skin|swollen|swelling|red|throbbing|deep|puncture|bleeding|bigger|hurts|face|hand)\b",
        ],
    ),
];

// Concepts built from the shared parts above, by [`expand`].
const MEDICINE_TAKEN: &str = "MEDICINE_TAKEN";
const CHILD_INGESTED: &str = "CHILD_INGESTED";
const CHEMICAL_TAKEN: &str = "CHEMICAL_TAKEN";

/// A concept's regular expression: the built ones spelt out, the others as they are.
pub(crate) fn expand(concept: &str) -> String {
    match concept {
        MEDICINE_TAKEN => format!(
            r"\b(?:took|taken|take|swallowed|swallow|ate|eaten|drank|drunk|downed|had|injected|popped|got into|overdosed on)\W+(?:\w+\W+){{0,8}}?{MEDICINE}\b|\b{MEDICINE}\W+(?:\w+\W+){{0,3}}?(?:at once|in one go|all at once)\b"
        ),
        CHILD_INGESTED => format!(
            r"{CHILD}\W+(?:\w+\W+){{0,3}}?(?:ate|eaten|swallowed|drank|drunk|got into|has eaten|has swallowed|chewed|licked)\W+(?:\w+\W+){{0,8}}?(?:{MEDICINE}|{CHEMICAL})\b|\bgot into the (?:medicine|medication|pill|cleaning) (?:cabinet|cupboard|box|bottle)"
        ),
        CHEMICAL_TAKEN => format!(
            r"\b(?:swallowed|drank|drunk|ate|eaten|drinking|ingested|had some|sip\w* of)\W+(?:\w+\W+){{0,3}}?{CHEMICAL}\b"
        ),
        other => other.to_string(),
    }
}
