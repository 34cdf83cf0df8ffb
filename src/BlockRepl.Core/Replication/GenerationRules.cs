namespace BlockRepl.Core.Replication;

/// <summary>One node's identity and generations as compared at a handshake.</summary>
/// <param name="DiscardMyData">Set on the victim of a split brain by <c>resolve --discard-my-data</c> (receivers only).</param>
public sealed record GenerationInfo(ulong Current, ulong Bitmap, IReadOnlyList<ulong> History, bool Fresh, bool NeedsFullSync, bool DiscardMyData = false);

/// <summary>The outcome rows of the generations table (DESIGN.md), seen from the sending node.</summary>
public enum SyncDecision
{
    InSync,
    BitmapResync,
    FullResync,

    /// <summary>The receiver holds newer data: the sender must step down and become its sync target.</summary>
    PeerIsNewer,
    SplitBrain,
    Unrelated,
}

/// <summary>The generations table of DESIGN.md as a pure function, so every row has a unit test.</summary>
public static class GenerationRules
{
    /// <summary>
    /// Decides what happens when <paramref name="sender"/> (a primary) connects to <paramref name="receiver"/>.
    /// Identity (UUID, size) is checked before this; a fresh receiver is a full sync and adopts the UUID.
    /// </summary>
    public static (SyncDecision Decision, string Reason) Decide(GenerationInfo sender, GenerationInfo receiver)
    {
        ArgumentNullException.ThrowIfNull(sender);
        ArgumentNullException.ThrowIfNull(receiver);
        if (receiver.Fresh)
        {
            return (SyncDecision.FullResync, "the receiver is fresh (never synced): full sync, holes skipped");
        }

        var mustBeFull = sender.NeedsFullSync || receiver.NeedsFullSync;
        var fullWhy = sender.NeedsFullSync
            ? "the sender may hold writes no bitmap names (crash or demotion with writes unshipped)"
            : "the receiver may hold writes no bitmap names (crash or demotion with writes unshipped)";

        if (receiver.DiscardMyData)
        {
            return DecideDiscard(sender, receiver, mustBeFull, fullWhy);
        }

        if (sender.Current == receiver.Current)
        {
            return mustBeFull
                ? (SyncDecision.FullResync, $"generations equal ({Hex(sender.Current)}) but {fullWhy}: full resync")
                : (SyncDecision.InSync, $"generations equal ({Hex(sender.Current)}): in sync");
        }

        if (sender.Bitmap != 0 && sender.Bitmap == receiver.Current)
        {
            return mustBeFull
                ? (SyncDecision.FullResync, $"bitmap generation matches, but {fullWhy}: full resync")
                : (SyncDecision.BitmapResync, $"the receiver is at the sender's bitmap generation {Hex(receiver.Current)}: bitmap resync");
        }

        if (sender.History.Contains(receiver.Current))
        {
            return (SyncDecision.FullResync, $"the receiver's generation {Hex(receiver.Current)} is in the sender's history: full resync");
        }

        if ((receiver.Bitmap != 0 && receiver.Bitmap == sender.Current) || receiver.History.Contains(sender.Current))
        {
            return (SyncDecision.PeerIsNewer, $"the receiver moved on from the sender's generation {Hex(sender.Current)}: the sender becomes its sync target");
        }

        var common = sender.History.Where(g => g != 0).Intersect(receiver.History).FirstOrDefault();
        if (common == 0 && sender.Bitmap != 0 && receiver.History.Contains(sender.Bitmap))
        {
            common = sender.Bitmap;
        }

        if (common == 0 && receiver.Bitmap != 0 && sender.History.Contains(receiver.Bitmap))
        {
            common = receiver.Bitmap;
        }

        return common != 0
            ? (SyncDecision.SplitBrain, $"split brain: both nodes changed since generation {Hex(common)} (sender {Hex(sender.Current)}, receiver {Hex(receiver.Current)})")
            : (SyncDecision.Unrelated, $"no common generation (sender {Hex(sender.Current)}, receiver {Hex(receiver.Current)}): unrelated data");
    }

    /// <summary>
    /// The receiver gives up its changes. Its bitmap names them relative to its base (its bitmap generation, or its
    /// current one when it kept none); when the sender's bitmap (or current) is relative to the same base, the two
    /// bitmaps together name everything that differs: a bitmap resync. Otherwise a full one, if they are related.
    /// </summary>
    private static (SyncDecision, string) DecideDiscard(GenerationInfo sender, GenerationInfo receiver, bool mustBeFull, string fullWhy)
    {
        var receiverBase = receiver.Bitmap != 0 ? receiver.Bitmap : receiver.Current;
        var sameBase = sender.Current == receiverBase || (sender.Bitmap != 0 && sender.Bitmap == receiverBase);
        if (sameBase)
        {
            return mustBeFull
                ? (SyncDecision.FullResync, $"the receiver discards its data, and {fullWhy}: full resync")
                : (SyncDecision.BitmapResync, $"the receiver discards its changes since generation {Hex(receiverBase)}: bitmap resync from both bitmaps");
        }

        var mine = new HashSet<ulong>(receiver.History) { receiver.Current, receiver.Bitmap };
        mine.Remove(0);
        var related = mine.Contains(sender.Current) || (sender.Bitmap != 0 && mine.Contains(sender.Bitmap)) || sender.History.Any(mine.Contains);
        return related
            ? (SyncDecision.FullResync, "the receiver discards its data; the bitmaps share no base generation: full resync")
            : (SyncDecision.Unrelated, $"no common generation (sender {Hex(sender.Current)}, receiver {Hex(receiver.Current)}): unrelated data, nothing to discard into");
    }

    public static string Hex(ulong generation) => "0x" + generation.ToString("x16", System.Globalization.CultureInfo.InvariantCulture);
}
