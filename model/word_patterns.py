"""Where words begin and end, and what the tokenizer deletes: the character classes of Hugging Face's BertTokenizer
as RE2 patterns, for model.preprocessor's graph and for chunking (runtime) without TensorFlow or tensorflow_text.

Character categories are those of `tokenizers` (Unicode 8), not RE2's, through the code point lists below
(see model.preprocessor's docstring for the steps that use them).
"""

import re

__all__ = ["CLS", "MASK", "NONSPACING_REGEX", "PAD", "RAW_WORD_KEPT_REGEX", "RAW_WORD_SPLIT_REGEX", "REMOVED_REGEX",
           "SEP", "SPLIT_KEPT_REGEX", "SPLIT_REGEX", "UNK", "WHITESPACE_REGEX"]

CLS, SEP, PAD, MASK, UNK = "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"

# Hugging Face's `tokenizers` classifies characters with tables frozen at Unicode 8 (the unicode_categories
# crate), RE2 with recent ones: characters encoded or reclassified since then need exceptions. Found by
# comparing every code point (tensorflow-text 2.21, tokenizers 0.23); tests/model/test_preprocessor.py repeats that.
# Code point ranges, hex. Format characters that Hugging Face keeps (it deletes the rest of category C):
_KEPT_FORMAT = "890-891 8E2 110CD 13430-1343F"
# Punctuation beyond ASCII as `tokenizers` knows it (category P of Unicode 8, and U+166D), listed in full:
# RE2's \p{P} with exceptions would need a word-matching split, which is slower.
_PUNCTUATION = (
    "A1 A7 AB B6-B7 BB BF 37E 387 55A-55F 589-58A 5BE 5C0 5C3 5C6 5F3-5F4 609-60A 60C-60D 61B 61E-61F 66A-66D "
    "6D4 700-70D 7F7-7F9 830-83E 85E 964-965 970 AF0 DF4 E4F E5A-E5B F04-F12 F14 F3A-F3D F85 FD0-FD4 FD9-FDA "
    "104A-104F 10FB 1360-1368 1400 166D-166E 169B-169C 16EB-16ED 1735-1736 17D4-17D6 17D8-17DA 1800-180A "
    "1944-1945 1A1E-1A1F 1AA0-1AA6 1AA8-1AAD 1B5A-1B60 1BFC-1BFF 1C3B-1C3F 1C7E-1C7F 1CC0-1CC7 1CD3 2010-2027 "
    "2030-2043 2045-2051 2053-205E 207D-207E 208D-208E 2308-230B 2329-232A 2768-2775 27C5-27C6 27E6-27EF "
    "2983-2998 29D8-29DB 29FC-29FD 2CF9-2CFC 2CFE-2CFF 2D70 2E00-2E2E 2E30-2E42 3001-3003 3008-3011 3014-301F "
    "3030 303D 30A0 30FB A4FE-A4FF A60D-A60F A673 A67E A6F2-A6F7 A874-A877 A8CE-A8CF A8F8-A8FA A8FC A92E-A92F "
    "A95F A9C1-A9CD A9DE-A9DF AA5C-AA5F AADE-AADF AAF0-AAF1 ABEB FD3E-FD3F FE10-FE19 FE30-FE52 FE54-FE61 FE63 "
    "FE68 FE6A-FE6B FF01-FF03 FF05-FF0A FF0C-FF0F FF1A-FF1B FF1F-FF20 FF3B-FF3D FF3F FF5B FF5D FF5F-FF65 "
    "10100-10102 1039F 103D0 1056F 10857 1091F 1093F 10A50-10A58 10A7F 10AF0-10AF6 10B39-10B3F 10B99-10B9C "
    "11047-1104D 110BB-110BC 110BE-110C1 11140-11143 11174-11175 111C5-111C9 111CD 111DB 111DD-111DF "
    "11238-1123D 112A9 114C6 115C1-115D7 11641-11643 1173C-1173E 12470-12474 16A6E-16A6F 16AF5 16B37-16B3B "
    "16B44 1BC9F 1DA87-1DA8B")
# Nonspacing marks (Mn, stripped with the accents) in Unicode 8 but no longer, and nonspacing marks since:
_NONSPACING_EXTRA = "1734"
_NOT_NONSPACING = (
    "7FD 898-89F 8CA-8E1 9FE AFA-AFF B55 C04 C3C D00 D3B-D3C D81 EBA ECE 180F 1885-1886 1ABF-1ACE 1DF6-1DFB "
    "A82C A8C5 A8FF A9BD 10D24-10D27 10EAB-10EAC 10EFD-10EFF 10F46-10F50 10F82-10F85 11070 11073-11074 110C2 "
    "111C9 111CF 1123E 11241 1133B 11438-1143F 11442-11444 11446 1145E 1182F-11837 11839-1183A 1193B-1193C "
    "1193E 11943 119D4-119D7 119DA-119DB 119E0 11A01-11A0A 11A33-11A38 11A3B-11A3E 11A47 11A51-11A56 "
    "11A59-11A5B 11A8A-11A96 11A98-11A99 11C30-11C36 11C38-11C3D 11C3F 11C92-11CA7 11CAA-11CB0 11CB2-11CB3 "
    "11CB5-11CB6 11D31-11D36 11D3A 11D3C-11D3D 11D3F-11D45 11D47 11D90-11D91 11D95 11D97 11EF3-11EF4 "
    "11F00-11F01 11F36-11F3A 11F40 11F42 13440 13447-13455 16F4F 16FE4 1CF00-1CF2D 1CF30-1CF46 1E000-1E006 "
    "1E008-1E018 1E01B-1E021 1E023-1E024 1E026-1E02A 1E08F 1E130-1E136 1E2AE 1E2EC-1E2EF 1E4EC-1E4EF "
    "1E944-1E94A")
# Hugging Face's CJK ideograph blocks, as `tokenizers` has them: its 2B920 where BERT has 2B820 is kept.
_CJK = "4E00-9FFF 3400-4DBF 20000-2A6DF 2A700-2B73F 2B740-2B81F 2B920-2CEAF F900-FAFF 2F800-2FA1F"


def _char_class(ranges: str) -> str:
    """Turns "7FD 898-89F" into the inside of an RE2 character class, \\x{7FD}\\x{898}-\\x{89F}."""
    return "".join("-".join(rf"\x{{{bound}}}" for bound in item.split("-")) for item in ranges.split())


# BertNormalizer(clean_text=True): tab, newline, carriage return and category Z become a space; NUL, U+FFFD
# and category C go. Unassigned code points (Cn) stay, as in Hugging Face; RE2's \p{C} has none of them. A
# kept character matches the group and is written back; RE2 has no class subtraction.
WHITESPACE_REGEX = r"[\t\n\r\p{Z}]"
REMOVED_REGEX = rf"([{_char_class(_KEPT_FORMAT)}])|[\p{{C}}\x{{FFFD}}]"
NONSPACING_REGEX = rf"([{_char_class(_NOT_NONSPACING)}])|[\p{{Mn}}{_char_class(_NONSPACING_EXTRA)}]"
# BertPreTokenizer: words end at whitespace (only spaces are left after cleaning); each punctuation character
# (ASCII symbols and _PUNCTUATION) and each CJK ideograph is a word of its own.
SPLIT_KEPT_REGEX = rf"[!-/:-@\[-`{{-~{_char_class(_PUNCTUATION)}{_char_class(_CJK)}]"
SPLIT_REGEX = rf" +|{SPLIT_KEPT_REGEX}"
# Step 4's word boundaries as they fall in the raw text, for callers that cut texts between words
# (runtime.chunking): runs of whitespace separate words; each special token, punctuation character and CJK
# ideograph is a word of its own. Cleaning and lowercasing never move a boundary, so the words of a text are
# those of its tokenization.
RAW_WORD_KEPT_REGEX = "|".join(re.escape(token) for token in (CLS, SEP, PAD, MASK, UNK)) + "|" + SPLIT_KEPT_REGEX
RAW_WORD_SPLIT_REGEX = rf"{WHITESPACE_REGEX}+|{RAW_WORD_KEPT_REGEX}"
