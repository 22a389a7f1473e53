"""Write the shipped knowledge base, src/kanoclip/knowledge/data/general.json.

No LLM could be reached where kanoclip was written, so the shipped sentences are composed from facts: each class's
object and its published defect types (the folder names of MVTec AD, VisA, MPDD, BTAD, DTD-Synthetic, the DAGM
descriptions, the medical datasets' findings). Regenerate with a real LLM:
`kanoclip knowledge general --out my_knowledge.json` (any OpenAI-compatible server).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "kanoclip" / "knowledge" / "data" / "general.json"

# class -> (datasets, object noun, what a normal one looks like, visible defects)
CLASSES: dict[str, tuple[list[str], str, str, list[str]]] = {
    "object": (
        ["any"],
        "object",
        "an intact object or surface with uniform, regular appearance",
        [
            "a scratch",
            "a crack",
            "a hole",
            "contamination",
            "a missing part",
            "deformation",
            "discoloration",
            "a stain",
            "a dent",
            "a broken edge",
            "a lesion",
            "an abnormal growth",
        ],
    ),
    # MVTec AD
    "bottle": (
        ["mvtec"],
        "bottle",
        "a round glass bottle mouth seen from above with a smooth rim",
        ["a broken rim", "a chipped glass edge", "contamination inside"],
    ),
    "cable": (
        ["mvtec"],
        "cable",
        "a cable cross-section with three coloured wires in order",
        ["a bent wire", "a missing wire", "swapped wire colours", "a cut inner insulation", "poked insulation"],
    ),
    "capsule": (
        ["mvtec"],
        "capsule",
        "a smooth pill capsule with clean printed text",
        ["a crack", "a faulty imprint", "a poke", "a scratch", "a squeezed shape"],
    ),
    "carpet": (
        ["mvtec"],
        "carpet",
        "a carpet with an even woven texture",
        ["a colour spot", "a cut", "a hole", "a metal contamination", "a thread sticking out"],
    ),
    "grid": (
        ["mvtec"],
        "metal grid",
        "a regular metal grid pattern",
        ["a bent wire", "a broken strand", "glue", "metal contamination", "a thread"],
    ),
    "hazelnut": (
        ["mvtec"],
        "hazelnut",
        "a whole brown hazelnut with an intact shell",
        ["a crack", "a cut", "a hole", "a printed mark"],
    ),
    "leather": (
        ["mvtec"],
        "leather",
        "a leather surface with uniform grain",
        ["a colour patch", "a cut", "a fold", "glue", "a poke"],
    ),
    "metal_nut": (
        ["mvtec"],
        "metal nut",
        "a metal nut with straight, complete edges",
        ["a bent edge", "a wrong colour", "a flipped nut", "a scratch"],
    ),
    "pill": (
        ["mvtec"],
        "pill",
        "a white pill with regular red speckles and an imprint",
        ["a colour spot", "contamination", "a crack", "a faulty imprint", "a pill type mix-up", "a scratch"],
    ),
    "screw": (
        ["mvtec"],
        "screw",
        "a metal screw with a regular thread and head",
        [
            "a manipulated front",
            "a scratched head",
            "a scratched neck",
            "a damaged thread top",
            "a damaged thread side",
        ],
    ),
    "tile": (
        ["mvtec"],
        "tile",
        "a tile with a regular speckled pattern",
        ["a crack", "glue strips", "a grey stroke", "oil", "a rough patch"],
    ),
    "toothbrush": (
        ["mvtec"],
        "toothbrush",
        "a toothbrush head with even, straight bristles",
        ["frayed bristles", "missing bristles", "bent bristles"],
    ),
    "transistor": (
        ["mvtec"],
        "transistor",
        "a transistor with three straight leads on a board",
        ["a bent lead", "a cut lead", "a damaged case", "a misplaced transistor"],
    ),
    "wood": (
        ["mvtec"],
        "wood",
        "a wooden surface with natural, even grain",
        ["a colour spot", "a combined defect", "a hole", "liquid", "a scratch"],
    ),
    "zipper": (
        ["mvtec"],
        "zipper",
        "a zipper with even, interlocked teeth",
        [
            "broken teeth",
            "a fabric border defect",
            "fabric interior damage",
            "rough fabric",
            "split teeth",
            "squeezed teeth",
        ],
    ),
    # VisA
    "candle": (
        ["visa"],
        "candle",
        "white tea-light candles with clean wax",
        [
            "a chunk of wax missing",
            "a damaged corner",
            "a different colour spot",
            "foreign particles",
            "wax melded out",
            "an extra wick",
        ],
    ),
    "capsules": (
        ["visa"],
        "capsules",
        "green capsules with smooth surfaces",
        ["a bubble", "a discoloured capsule", "a leak", "a misshape"],
    ),
    "cashew": (
        ["visa"],
        "cashew",
        "a whole cashew nut with even colour",
        ["a breakage", "a burnt spot", "stuck-together nuts", "a hole", "a small scratch", "a spot"],
    ),
    "chewinggum": (
        ["visa"],
        "chewing gum",
        "a white chewing gum piece with smooth edges",
        ["a chunk of gum missing", "corner missing", "a scratch", "a similar colour spot"],
    ),
    "fryum": (
        ["visa"],
        "fryum",
        "a round wheel-shaped fryum snack",
        ["a breakage", "a burnt spot", "a colour spot", "a similar colour spot", "a middle breakage"],
    ),
    "macaroni1": (
        ["visa"],
        "macaroni",
        "four pieces of macaroni on a flat background",
        ["a chip around the edge", "a small crack", "a small scratch", "a colour spot"],
    ),
    "macaroni2": (
        ["visa"],
        "macaroni",
        "four pieces of macaroni on a textured background",
        ["a breakage", "a crack", "a hole", "a scratch", "a colour spot"],
    ),
    "pcb1": (
        ["visa"],
        "printed circuit board",
        "a printed circuit board with intact components and traces",
        ["a bent lead", "a melted component", "a missing component", "a scratch"],
    ),
    "pcb2": (
        ["visa"],
        "printed circuit board",
        "a printed circuit board with intact components and traces",
        ["a bent lead", "a melted component", "a missing component", "a scratch"],
    ),
    "pcb3": (
        ["visa"],
        "printed circuit board",
        "a printed circuit board with intact components and traces",
        ["a bent lead", "a melted component", "a missing component", "a scratch"],
    ),
    "pcb4": (
        ["visa"],
        "printed circuit board",
        "a printed circuit board with intact components and traces",
        ["a burnt spot", "a damaged component", "a dirty spot", "an extra component", "a missing component"],
    ),
    "pipe_fryum": (
        ["visa"],
        "pipe fryum",
        "a tube-shaped fryum snack",
        ["a breakage", "a burnt spot", "a crack", "a colour spot", "a stuck-on particle"],
    ),
    # BTAD
    "01": (["btad"], "industrial product", "a smooth product surface", ["a crack", "a dent", "a surface flaw"]),
    "02": (
        ["btad"],
        "industrial product",
        "a product surface with even texture",
        ["a hole", "a scratch", "a surface flaw"],
    ),
    "03": (["btad"], "industrial product", "a uniform product surface", ["a spot", "a scratch", "a surface flaw"]),
    # MPDD
    "bracket_black": (
        ["mpdd"],
        "black metal bracket",
        "a black painted metal bracket with even coating",
        ["a hole", "a scratch"],
    ),
    "bracket_brown": (
        ["mpdd"],
        "brown metal bracket",
        "a brown painted metal bracket with even coating",
        ["a bend and parts mismatch", "parts mismatch"],
    ),
    "bracket_white": (
        ["mpdd"],
        "white metal bracket",
        "a white painted metal bracket with even coating",
        ["a defective painting", "a scratch"],
    ),
    "connector": (["mpdd"], "metal connector", "two metal connector parts fitted correctly", ["parts mismatch"]),
    "metal_plate": (
        ["mpdd"],
        "metal plate",
        "a flat metal plate with a clean surface",
        ["a major rust area", "a scratch", "total rust"],
    ),
    "tubes": (["mpdd"], "metal tubes", "a row of straight metal tubes", ["an anomalous tube", "a dent"]),
    # SDD
    "electrical_commutator": (
        ["sdd"],
        "electrical commutator",
        "a commutator surface with clean, even plating",
        ["a surface crack", "a spot defect", "a fracture in the plating"],
    ),
    # DAGM
    **{
        f"Class{i}": (
            ["dagm"],
            "textured surface",
            "a statistically uniform textured surface",
            ["a scratch", "a spot", "a streak", "a blob", "a texture disturbance"],
        )
        for i in range(1, 11)
    },
    # DTD-Synthetic
    **{
        name: (
            ["dtd-synthetic"],
            f"{name.split('_')[0].lower()} texture",
            f"a regular {name.split('_')[0].lower()} texture",
            ["a pasted foreign patch", "a colour blotch", "a texture irregularity"],
        )
        for name in [
            "Blotchy_099",
            "Fibrous_183",
            "Marbled_078",
            "Matted_069",
            "Mesh_114",
            "Perforated_037",
            "Stratified_154",
            "Woven_001",
            "Woven_068",
            "Woven_104",
            "Woven_125",
            "Woven_127",
        ]
    },
    # medical
    "brain_mri": (
        ["brainmri", "bmad-brain"],
        "brain MRI slice",
        "a brain MRI slice with symmetric tissue",
        ["a tumour", "a bright mass", "an asymmetric lesion", "swelling"],
    ),
    "head_ct": (
        ["headct"],
        "head CT slice",
        "a head CT slice with symmetric brain tissue",
        ["a haemorrhage", "a bright bleed", "a blood collection", "a midline shift"],
    ),
    "br35h": (
        ["br35h"],
        "brain MRI slice",
        "a brain MRI slice with symmetric tissue",
        ["a brain tumour", "a bright mass", "an abnormal lesion"],
    ),
    "skin": (
        ["isic"],
        "skin",
        "smooth skin with even pigmentation",
        ["a skin lesion", "a dark irregular mole", "a pigmented patch with uneven border"],
    ),
    "colon": (
        ["colondb", "clinicdb", "kvasir"],
        "colon wall",
        "a smooth pink colon mucosa in endoscopy",
        ["a polyp", "a raised growth", "a reddish bulge of tissue"],
    ),
    "endoscopy": (
        ["endo"],
        "gastrointestinal tract",
        "smooth healthy mucosa in an endoscopy image",
        ["a polyp", "an ulcer", "bleeding", "an inflamed area"],
    ),
    "thyroid": (
        ["tn3k"],
        "thyroid",
        "uniform thyroid tissue in an ultrasound image",
        ["a nodule", "a dark round mass", "an irregular lesion"],
    ),
    "liver": (
        ["bmad-liver"],
        "liver CT slice",
        "a liver CT slice with uniform tissue",
        ["a tumour", "a dark lesion", "an irregular mass"],
    ),
    "retina": (
        ["bmad-resc"],
        "retina OCT scan",
        "a retina OCT scan with regular, even layers",
        ["fluid under the retina", "a detached layer", "a swelling of the layers"],
    ),
    "chest": (
        ["bmad-chest", "covid"],
        "chest X-ray",
        "a chest X-ray with clear lungs",
        ["an opacity", "a lung infection", "a consolidation"],
    ),
    "histopathology": (
        ["bmad-his"],
        "tissue slide",
        "a histopathology slide of regular tissue",
        ["tumour cells", "irregular nuclei", "a metastasis"],
    ),
}


def sentences(noun: str, normal_look: str, defects: list[str]) -> dict[str, list[str]]:
    normal = [
        f"a photo of a flawless {noun}.",
        f"{normal_look}.",
        f"a {noun} without any defect.",
        f"a clean, intact {noun} with regular appearance.",
        f"a normal {noun} with uniform colour and texture.",
        f"a {noun} in perfect condition.",
    ]
    abnormal = [f"a {noun} with {defect}." for defect in defects]
    abnormal += [
        f"a damaged {noun}.",
        f"a {noun} with a visible defect.",
        f"an abnormal {noun} with an irregular region.",
    ]
    return {"normal": normal, "abnormal": abnormal}


# dataset folder names (as the loaders report them) that mean a medical class above
ALIASES: dict[str, list[str]] = {
    "electrical_commutator": ["commutator", "kolektor", "sdd"],
    "brain_mri": ["brainmri", "brain_tumor_dataset", "brats", "brain"],
    "head_ct": ["headct", "head_ct"],
    "br35h": ["br35h"],
    "skin": ["isic", "skin"],
    "colon": ["kvasir", "colondb", "clinicdb", "cvc", "polyp", "colon"],
    "endoscopy": ["endo"],
    "thyroid": ["tn3k", "thyroid"],
    "liver": ["liver"],
    "retina": ["resc", "retina", "oct"],
    "chest": ["chest", "covid"],
    "histopathology": ["his", "camelyon"],
}


def main() -> None:
    document = {
        "header": {
            "written_by": "composed by scripts/build_knowledge_base.py from each class's object and its published "
            "defect types; no LLM was reachable when it was written",
            "regenerate": "kanoclip knowledge general --classes ... --out FILE (any OpenAI-compatible server)",
            "format": "classes -> {datasets, aliases (folder-name fragments), normal: [...], abnormal: [...]}",
        },
        "classes": {
            name: {"datasets": datasets, "aliases": ALIASES.get(name, []), **sentences(noun, look, defects)}
            for name, (datasets, noun, look, defects) in CLASSES.items()
        },
    }
    OUT.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {OUT}: {len(CLASSES)} classes")


if __name__ == "__main__":
    main()
