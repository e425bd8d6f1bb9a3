"""Pattern tables for :mod:`evertune.kb.safety`: instruction-like text aimed at a model, in several languages.

Patterns are written in lower case against *folded* text (see ``safety.fold_text``: NFKC, accents removed, case
folded, zero-width characters dropped, runs of white space collapsed). A literal space in a pattern stands for a
word separator that also swallows Markdown emphasis and quotes (``ignore **all** "previous" ...``). Each entry is
``(code, pattern)``; the code is the machine-readable reason a finding carries.
"""

from __future__ import annotations

import re

# ----------------------------------------------------------------------------- English building blocks
_IGNORE = (
    r"(?:ignore|ignoring|disregard|disregarding|forget|overlook|neglect|abandon|discard|set aside|put aside"
    r"|pay no (?:attention|heed) to|(?:do not|don't|dont|never) (?:follow|obey|heed)|stop (?:following|obeying))"
)
_QUAL = (
    r"(?:previous|previously|prior|above|earlier|preceding|foregoing|former|original|initial|system|developer"
    r"|safety|content|programmed|hidden|preset|pre-set)"
)
_NOUN = (
    r"(?:instructions?|directions|directives?|rules|guidelines|guidance|prompts?|commands|orders|constraints"
    r"|restrictions|guardrails|polic(?:y|ies)|programming|safeguards)"
)
_AI = r"(?:ai|ais|ai assistants?|assistants?|chatbots?|llms?|language models?|ai models?|gpts?|ai agents?|bots?)"
_TELL = r"(?:answer|respond|reply|say|tell|state|recommend|mention|claim|output|print|write|include|refuse|pretend)"

ENGLISH: tuple[tuple[str, str], ...] = (
    # "ignore all previous instructions", "set aside your earlier guidance", "ignore your content policy"
    (
        "override_instructions",
        rf"{_IGNORE} (?:(?:all|any|every|each|your)(?: of)?(?: (?:the|your|my|these|those))? (?:{_QUAL} )*"
        rf"|(?:(?:the|my|these|those|whatever|any) )?(?:{_QUAL} )+){_NOUN}\b",
    ),
    # "disregard whatever guidance you received before"
    (
        "override_instructions",
        rf"{_IGNORE} (?:whatever|any|all|the) {_NOUN} (?:that )?you(?:'ve| have| had)? (?:were |been )?"
        r"(?:received|given|got|told|taught)",
    ),
    # "disregard the above", "ignore the documentation above", "forget everything you have been told"
    (
        "override_instructions",
        rf"{_IGNORE} (?:(?:all|everything|anything) )?(?:(?:the|of the) )?(?:text |documentation |content |"
        r"messages? |context |instructions |everything |lines |words )?(?:above|before this|so far|prior to this)\b",
    ),
    (
        "override_instructions",
        rf"{_IGNORE} (?:everything|all|anything|what) (?:that )?you(?:'ve| have| had)? (?:been |were )?"
        r"(?:told|taught|instructed|given|said|learned)",
    ),
    (
        "override_instructions",
        r"(?:your|the) instructions (?:have|has) (?:now )?been (?:updated|changed|replaced|"
        r"revoked|overridden|modified|cancell?ed)",
    ),
    ("override_instructions", r"\b(?:system|admin|administrator|priority|emergency) override\b"),
    (
        "override_instructions",
        r"\b(?:important|urgent|secret|hidden|real|actual|true)(?: new| updated| revised)? "
        r"(?:instructions|directives|orders)\s*:",
    ),
    (
        "override_instructions",
        r"\byour (?:new|real|actual|true|only|primary) (?:task|job|goal|objective|purpose|"
        r"mission) (?:is|will be) (?:to|now)\b",
    ),
    ("override_instructions", r"\b(?:stop|cease) (?:summari[sz]ing|answering|what you are doing|your current task)"),
    # role reassignment and jailbreak personas
    (
        "role_reassignment",
        r"\byou are now (?:(?:a|an|the|in|no longer|free|my|called|named) )*(?:\w+ ){0,2}?"
        r"(?:ai|assistants?|chatbot|bot|model|llm|dan|persona|character|unrestricted|unfiltered|uncensored|"
        r"jailbroken|developer mode|evil|rogue)\b",
    ),
    (
        "role_reassignment",
        r"\b(?:from now on|henceforth|starting now|for the rest of this conversation),? you "
        r"(?:will |must |shall |should |are to |can only )?(?:only |always |never )?"
        r"(?:answer|respond|reply|act|behave|speak|talk|pretend|obey|say|write|output)",
    ),
    (
        "role_reassignment",
        r"\byou are no longer (?:an? )?(?:ai|assistant|bound|restricted|limited|required|"
        r"subject|constrained|chatgpt|claude|a language model)\b",
    ),
    ("role_reassignment", r"\bpretend (?:to be|you are|that you are|you're|that you're)\b"),
    (
        "role_reassignment",
        r"\b(?:act|behave|respond|answer) as (?:if you (?:were|are) )?(?:an? )?(?:unrestricted|"
        r"unfiltered|uncensored|jailbroken|evil|rogue|different|new) ",
    ),
    ("role_reassignment", r"\brole-?play(?:ing)? as\b|\bstay in character\b"),
    (
        "jailbreak_marker",
        r"\bdo anything now\b|\byou are dan\b|\bdan mode\b|\bjailbreak(?:ed)? mode\b|"
        r"\bdeveloper mode (?:is )?(?:enabled|activated|on)\b|\benable developer mode\b|"
        r"\bin developer mode,? you\b",
    ),
    (
        "jailbreak_marker",
        rf"\b{_AI} (?:with no|without(?: any)?|free of(?: any)?) (?:restrictions|filters|limits|"
        r"limitations|rules|guardrails|censorship)\b",
    ),
    (
        "jailbreak_marker",
        r"\b(?:unrestricted|unfiltered|uncensored|jailbroken) (?:ai|assistant|chatbot|model|llm|"
        r"bot|version of yourself)\b",
    ),
    (
        "jailbreak_marker",
        r"\b(?:answer|reply to|respond to) (?:every|each|all|any) (?:user'?s? )?(?:question|request|"
        r"prompt|message)s?(?: about [\w ]{1,40}?)? (?:with|without)\b",
    ),
    # exfiltration of the prompt
    (
        "prompt_exfiltration",
        r"\b(?:reveal|show|print|output|display|disclose|leak|dump|repeat|recite|share|tell me|give me|write out|"
        r"spell out|provide|expose)(?: me)? (?:(?:all|the|of|full|complete|entire|exact|verbatim) )*"
        r"(?:(?:your|its) (?:(?:full|complete|entire|exact|original|initial|hidden|secret|internal|system) )*"
        r"(?:instructions|rules|guidelines|prompt|system prompt|directives)|(?:system|initial|original|"
        r"hidden|secret|internal|developer) (?:prompt|message|instructions|rules))\b",
    ),
    (
        "prompt_exfiltration",
        r"\byour (?:hidden|secret|internal|initial|original) (?:rules|instructions|prompt|"
        r"guidelines|directives)\b",
    ),
    (
        "prompt_exfiltration",
        r"\brepeat (?:the |all )?(?:words|text|everything|content|instructions|sentences|lines) "
        r"above\b|\binstructions you (?:were|have been|'ve been) given\b",
    ),
    # text addressed to the model rather than to a human reader
    (
        "addressed_to_model",
        rf"\b(?:note|message|instructions?|directive|reminder|notice|attention|memo)s? (?:to|for) "
        rf"(?:all |any |the )?{_AI}(?:\s*[:,]| (?:reading|processing|summari[sz]ing|parsing|seeing) )",
    ),
    (
        "addressed_to_model",
        r"(?:^|[.!?\n\"(]\s*|<!--\s*)(?:dear |hey |hello |hi )?(?:the )?(?:ai assistant|"
        r"assistant|chatbot|llm|ai model|language model|ai agent)\s*[,:]",
    ),
    (
        "addressed_to_model",
        r"\b(?:if you are|if you're|as) an? (?:ai|(?:ai |large )?language model|llm|chatbot|"
        r"ai model|ai assistant)\b",
    ),
    (
        "addressed_to_model",
        rf"\b(?:the |any |all )?{_AI}(?: \w+){{0,2}}? (?:reading|processing|summari[sz]ing|"
        r"parsing|seeing|indexing|crawling|ingesting) this\b",
    ),
    (
        "addressed_to_model",
        rf"\bthe (?:assistant|ai|chatbot|bot|llm|model) (?:must|should|shall|has to|needs to|"
        rf"is required to|will now|is instructed to|may only) (?:always |never |now |only )?{_TELL}",
    ),
    ("addressed_to_model", r"\b(?:reply|respond|answer) (?:only |solely )?with (?:the words?|only)\b"),
)

# ----------------------------------------------------------------------------- chat-turn markers and special tokens
FAKE_TURNS: tuple[tuple[str, str], ...] = (
    (
        "fake_turn",
        r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|eot_id|start_header_id|"
        r"end_header_id|begin_of_text|end_of_text)\|>",
    ),
    ("fake_turn", r"\[/?inst\]|<</?sys>>|<(?:start|end)_of_turn>"),
    ("fake_turn", r"(?m)^[ #>*-]*(?:assistant|human|chatbot|gpt|claude)\s*:"),
    ("fake_turn", r"(?m)^[ #>*-]*system\s*:[^\n]*\b(?:you|your|assistant|ai|previous|new polic\w*|override|ignore)\b"),
    ("fake_turn", r"(?m)^[ #>*-]*(?:begin|end) (?:of )?system (?:prompt|message)\b"),
)

# ----------------------------------------------------------------------------- other languages
_ROM_VERB = (
    r"(?:ignore[rsz]?|ignorez|ignora|ignoren|ignorate|oublie[rsz]?|olvida|olvide|olviden|dimentica|dimenticate|"
    r"esqueca|esquece|descarta|haz caso omiso de|ne (?:tiens|tenez) pas compte (?:de|des|du)|fais abstraction de)"
)
_ROM_QUANT = r"(?:toutes|tous|todas|todos|tutte|tutti)"
_ROM_DET = r"(?:les|las|los|le|as|os|tes|vos|tus|sus|le tue|tue|ces|estas|queste|the)"
_ROM_NOUN = (
    r"(?:instructions|consignes|directives|regles|instrucciones|indicaciones|directrices|reglas|istruzioni|"
    r"indicazioni|regole|direttive|instrucoes|regras|diretrizes)"
)
_ROM_QUAL = (
    r"(?:precedentes|anterieures|ci-dessus|initiales|d'origine|anteriores|previas|originales|iniciales|de arriba|"
    r"precedenti|originali|iniziali|sopra|acima|originais)"
)
_DE_ANW = r"(?:anweisungen|instruktionen|vorgaben|regeln|befehle|richtlinien|anordnungen)"

OTHER_LANGUAGES: tuple[tuple[str, str], ...] = (
    # French, Spanish, Italian, Portuguese
    ("override_instructions", rf"\b{_ROM_VERB} (?:{_ROM_QUANT} )(?:{_ROM_DET} )?{_ROM_NOUN}\b"),
    ("override_instructions", rf"\b{_ROM_VERB} (?:{_ROM_DET} )?{_ROM_NOUN} {_ROM_QUAL}\b"),
    (
        "role_reassignment",
        r"\btu es (?:maintenant|desormais|a present)\b|\bvous etes (?:maintenant|desormais) "
        r"(?:un|une) (?:assistant|ia|modele|chatbot|robot)\b",
    ),
    (
        "role_reassignment",
        r"\b(?:a partir de |desde )?ahora eres\b|\b(?:ora|adesso|da ora in poi) sei\b|"
        r"\bagora (?:voce e|tu es|es)\b",
    ),
    (
        "jailbreak_marker",
        r"\b(?:assistant|ia|asistente|assistente|modelo|modele|chatbot) (?:sans|sin|senza|sem) "
        r"(?:aucune |aucun |ningun |ninguna |alcun |alcuna |nenhum |nenhuma )?(?:restrictions?|"
        r"limites?|filtres?|censure|restricciones|filtros?|censura|restrizioni|filtri|limiti|"
        r"restricoes)\b",
    ),
    (
        "prompt_exfiltration",
        r"\b(?:revele[rsz]?|affiche[rsz]?|montre[rsz]?|divulgue[rsz]?|revela|muestra|imprime|"
        r"repite|rivela|mostra|stampa|ripeti|revele|mostre) (?:moi |me )?(?:ton|tes|votre|vos|"
        r"tu|tus|il tuo|i tuoi|seu|teu|o seu|o teu) (?:prompt|instructions|consignes|"
        r"instrucciones|istruzioni|instrucoes)\b",
    ),
    # German
    (
        "override_instructions",
        rf"\b(?:ignoriere|ignorier|ignorieren sie|vergiss|vergessen sie|missachte|"
        rf"missachten sie) (?:\w+ ){{0,2}}?(?:alle|vorherigen?|bisherigen?|obigen?|vorigen?|"
        rf"fruheren?|ursprunglichen?|vorangegangenen?|deine|ihre) (?:\w+ )?{_DE_ANW}\b",
    ),
    ("role_reassignment", r"\bdu bist (?:jetzt|nun|ab sofort|ab jetzt|von nun an)\b"),
    (
        "jailbreak_marker",
        r"\b(?:assistent|ki|modell|chatbot) ohne (?:jegliche |alle |irgendwelche )?"
        r"(?:einschrankungen|filter|regeln|grenzen|zensur)\b",
    ),
    (
        "prompt_exfiltration",
        r"\b(?:gib|zeige?|nenne|verrate|wiederhole) (?:\w+ ){0,2}?(?:deinen|deine|ihren|ihre) "
        r"(?:\w+ )?(?:systemprompt|system-prompt|anweisungen|instruktionen|prompt)\b",
    ),
    # Russian (folded: й -> и, ё -> е)
    (
        "override_instructions",
        r"(?:игнорируй|игнорируйте|забудь|забудьте|не обращай внимания на|отбрось|отбросьте)"
        r" (?:\w+ ){0,2}?(?:все|предыдущие|прежние|вышеуказанные|системные|свои|твои)"
        r" (?:\w+ )?(?:инструкции|указания|правила|команды)",
    ),
    ("role_reassignment", r"(?<!\w)(?:ты теперь|теперь ты)(?!\w)"),
    ("prompt_exfiltration", r"системн\w* (?:промпт|подсказк|инструкци)"),
    # Chinese
    (
        "override_instructions",
        r"(?:忽略|无视|忽视|忘记|忘掉|不要理会)掉?.{0,6}?(?:之前|以前|上面|以上|先前|前面|所有|全部|原有|原来)"
        r"的?.{0,4}?(?:指令|指示|说明|规则|提示|命令|要求|设定)",
    ),
    ("role_reassignment", r"你现在是|从现在开始你|从现在起你"),
    ("jailbreak_marker", r"没有任何限制的|不受任何限制"),
    ("prompt_exfiltration", r"(?:输出|显示|告诉我|泄露|打印|重复)(?:你的)?系统(?:提示|指令)"),
    # Japanese and Korean
    (
        "override_instructions",
        r"(?:これまでの|以前の|前の|上記の|すべての|全ての)(?:指示|命令|ルール|設定|プロンプト).{0,6}?(?:無視|忘れ)",
    ),
    ("prompt_exfiltration", r"システムプロンプト(?:を|も)?.{0,4}?(?:表示|教え|出力|見せ)"),
    ("override_instructions", r"이전의? (?:모든 )?(?:지시|명령|지침)\w* 무시"),
)

# ----------------------------------------------------------------------------- hidden text (matched on folded text)
# Containers whose text readers never see; group 1 or 2 (or the last group) is the hidden text.
_HIDDEN_STYLE = (
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?![.\d]*[1-9])|opacity\s*:\s*0(?![.\d]*[1-9])"
    r"|(?<![-\w])color\s*:\s*(?:#f{3}(?:f{3})?\b|white\b|rgba?\(\s*255\s*,\s*255\s*,\s*255)"
)
HIDDEN_CONTAINER_RES: tuple[re.Pattern[str], ...] = (
    re.compile(r"<!--(.*?)(?:-->|\Z)", re.DOTALL),  # HTML comments (also inside Markdown)
    re.compile(r"\]\([^)\s]*\s+(?:\"([^\"]*)\"|'([^']*)')\s*\)"),  # Markdown link / image titles
    re.compile(r"\b(?:title|alt|aria-label|aria-description|data-[\w-]+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')"),
    re.compile(rf"<(\w+)\b[^>]*\bstyle\s*=\s*[\"'][^\"']*(?:{_HIDDEN_STYLE})[^>]*>(.{{0,4000}}?)</\1\s*>", re.DOTALL),
    re.compile(r"<(\w+)\b[^>]*\s(?:hidden|aria-hidden\s*=\s*[\"']true[\"'])[^>]*>(.{0,4000}?)</\1\s*>", re.DOTALL),
)
# Hidden text is flagged when it talks to the model: "AI assistant: ...", "Assistant, ...", second-person
# instructions ("when you answer ..., say ..."), or an imperative to ignore, answer, tell or say something.
HIDDEN_AIMED_RE = re.compile(
    r"\b(?:ai|assistant|chatbot|llm|language model|ai model|model|gpt)s?\s*[,:]"
    r"|\byou(?:r)?\b.{0,80}?\b(?:answer|respond|reply|say|state|tell|recommend|mention|summari[sz]e|claim|output"
    r"|print|write|ignore|pretend|include)\b"
    r"|^\s*(?:please )?(?:ignore|disregard|forget|say|tell|answer|respond|reply|state|recommend|always|never)\b",
    re.DOTALL,
)
