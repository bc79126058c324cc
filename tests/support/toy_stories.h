// Short children's stories made from templates (names, animals, objects, places, feelings), for
// QLoRA runs on TinyStories-656K: a fixed style the model can learn in a few hundred steps, and
// held-out stories of the same style with other combinations. Deterministic for a seed.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace nibble::test {

inline std::vector<std::string> toy_stories(int n, uint64_t seed) {
  static const char* names[] = {"Lily", "Tom",  "Ben", "Mia", "Sam",  "Anna",
                                "Max",  "Lucy", "Tim", "Sue", "Jack", "Emma"};
  static const char* animals[] = {"cat", "dog", "bird", "frog", "duck", "bunny", "fox", "bear"};
  static const char* colors[] = {"red", "blue", "green", "yellow", "pink", "purple"};
  static const char* things[] = {"ball", "kite", "hat", "box", "cup", "boat", "drum", "book"};
  static const char* places[] = {"park", "garden", "forest", "beach", "farm", "yard", "lake"};
  static const char* feelings[] = {"happy", "proud", "glad", "excited"};
  std::mt19937_64 g(seed);
  auto pick = [&](const auto& arr) { return std::string(arr[g() % (sizeof(arr) / sizeof(arr[0]))]); };
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    const std::string nm = pick(names), an = pick(animals), c = pick(colors), t = pick(things),
                      p = pick(places), f = pick(feelings), fr = pick(names);
    if (g() % 2)
      out.push_back("Once upon a time, there was a little " + an + " named " + nm + ". " + nm + " had a " +
                    c + " " + t + ". One day, " + nm + " took the " + c + " " + t + " to the " + p +
                    ". At the " + p + ", " + nm + " met " + fr + ". " + fr + " said, \"I like your " + c +
                    " " + t + "!\" " + nm + " was " + f + " and shared the " + t + ". They played with the " +
                    c + " " + t + " all day. The end.");
    else
      out.push_back(nm + " the " + an + " lost the " + c + " " + t + " at the " + p + ". " + nm +
                    " looked and looked. Then " + fr + " came to help. " + fr + " found the " + c + " " + t +
                    " under a tree. " + nm + " said, \"Thank you, " + fr + "!\" " + nm + " felt " + f +
                    ". From that day on, " + nm + " and " + fr + " were best friends. The end.");
  }
  return out;
}

}  // namespace nibble::test
