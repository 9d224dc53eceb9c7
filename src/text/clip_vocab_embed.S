/* Embeds OpenAI's CLIP BPE merges (data/clip/merges.txt, MIT) so the tokenizer needs no files at run time.
   CMake passes KILN_CLIP_MERGES_PATH; C++ sees [kiln_clip_merges_begin, kiln_clip_merges_end). */
    .section .rodata.kiln_clip_merges, "a", @progbits
    .balign 16
    .global kiln_clip_merges_begin
    .type kiln_clip_merges_begin, @object
kiln_clip_merges_begin:
    .incbin KILN_CLIP_MERGES_PATH
    .global kiln_clip_merges_end
    .type kiln_clip_merges_end, @object
kiln_clip_merges_end:
    .byte 0
    .size kiln_clip_merges_begin, kiln_clip_merges_end - kiln_clip_merges_begin

    .section .note.GNU-stack, "", @progbits
