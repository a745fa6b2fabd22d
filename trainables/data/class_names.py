"""Class names in label order for the prompts of the generation stage
(:mod:`trainables.data.generated`), and DAPT's prompt template for each set
(``sample_stable_diff.py``). Names are written as the datasets spell them (underscores kept), as
the authors' prompts do.

The authors generated Caltech-101 images from the CIFAR-100 names (their ``caltech101`` branch
reuses ``cifar100_classes``); the ``caltech101`` preset here holds Caltech-101's own 101 names.
"""
from __future__ import annotations

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "digits": tuple("zero one two three four five six seven eight nine".split()),
    "cifar10": tuple("airplane automobile bird cat deer dog frog horse ship truck".split()),
    "cifar100": tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
        butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile
        cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
        leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter
        palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose
        sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table
        tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
        worm""".split()),
    "dtd": tuple("""banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted
        fibrous flecked freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined marbled
        matted meshed paisley perforated pitted pleated polka-dotted porous potholed scaly smeared spiralled
        sprinkled stained stratified striped studded swirly veined waffled woven wrinkled zigzagged""".split()),
    "caltech101": tuple("""Faces Faces_easy Leopards Motorbikes accordion airplanes anchor ant barrel bass beaver
        binocular bonsai brain brontosaurus buddha butterfly camera cannon car_side ceiling_fan cellphone chair
        chandelier cougar_body cougar_face crab crayfish crocodile crocodile_head cup dalmatian dollar_bill dolphin
        dragonfly electric_guitar elephant emu euphonium ewer ferry flamingo flamingo_head garfield gerenuk
        gramophone grand_piano hawksbill headphone hedgehog helicopter ibis inline_skate joshua_tree kangaroo ketch
        lamp laptop llama lobster lotus mandolin mayfly menorah metronome minaret nautilus octopus okapi pagoda
        panda pigeon pizza platypus pyramid revolver rhino rooster saxophone schooner scissors scorpion sea_horse
        snoopy soccer_ball stapler starfish stegosaurus stop_sign strawberry sunflower tick trilobite umbrella watch
        water_lilly wheelchair wild_cat windsor_chair wrench yin_yang""".split()),
    "mit_indoor": tuple("""airport_inside artstudio auditorium bakery bar bathroom bedroom bookstore bowling buffet
        casino children_room church_inside classroom cloister closet clothingstore computerroom concert_hall
        corridor deli dentaloffice dining_room elevator fastfood_restaurant florist gameroom garage greenhouse
        grocerystore gym hairsalon hospitalroom inside_bus inside_subway jewelleryshop kindergarden kitchen
        laboratorywet laundromat library livingroom lobby locker_room mall meeting_room movietheater museum nursery
        office operating_room pantry poolinside prisoncell restaurant restaurant_kitchen shoeshop stairscase
        studiomusic subway toystore trainstation tv_studio videostore waitingroom warehouse winecellar""".split()),
}

# DAPT's templates ({} is the class name); sets the authors did not generate for use "a picture of a {}".
PROMPTS: dict[str, str] = {"mit_indoor": "the inside of a {}", "dtd": "{} texture", "cifar100": "a picture of a {}",
                           "caltech101": "a picture of a {}"}
DEFAULT_PROMPT = "a picture of a {}"
