/// A node of a network's module tree: PyTorch's `nn.Module` for NormKit's training stack.
///
/// A module declares, once, what it holds itself and its direct children; everything else is derived from that
/// one declaration by walking the tree:
///
/// | declared by the module | derived (in `Module`'s extension) |
/// |---|---|
/// | ``children`` (name and module, in registration order) | ``namedModules()``, ``train(_:)``, ``eval()``, printing |
/// | ``ownParameters`` (live ``/NormKit/Parameter``s, by their `name`) | ``namedParameters()``, ``parameters`` |
/// | ``ownBuffers()`` (running statistics, counters) | ``namedBuffers()``, ``stateDict()`` |
/// | ``loadOwnState(_:)`` | ``loadStateDict(_:strict:)``, ``loadStateDict(_:)`` |
///
/// Names are PyTorch's `state_dict` keys: the path of child names joined by dots, then the tensor's own name
/// (`conv1.weight`, `layer1.0.norm1.running_mean`, `fc.bias`). Every order is the tree's pre-order (a module's
/// own tensors, then each child's in ``children`` order), as in PyTorch; ``parameters`` is that order, which is
/// the order optimizers (and checkpoints' optimizer state) index parameters by.
///
/// Leaf layers (``Conv2d``, ``Linear``, ``ReLU``, …) have no children; containers (``Sequential``, ``ResNet``,
/// ``BasicBlock``, …) have no tensors of their own. NormKit's normalization layers join a tree wrapped in a
/// ``NormalizationModule``.
public protocol Module: AnyObject, CustomStringConvertible {
    /// A short name for error messages (`"Conv2d(16→32, 3×3, stride 2, padding 1)"`, `"ResNet-8"`).
    var name: String { get }
    /// One line with the module's kind and settings as PyTorch's `repr` prints it: the whole text of a leaf
    /// (`"Conv2d(16, 32, kernel_size=3, stride=2, padding=1, bias=False)"`, `"GroupNorm(16, 32)"`), the kind of
    /// a container (`"BasicBlock"`, `"Sequential"`), whose children ``description`` lists below it.
    var summary: String { get }
    /// The direct children with their attribute names, in registration order (the order of every derived list).
    var children: [(name: String, module: any Module)] { get }
    /// The trainable tensors the module holds itself (not its children's), live: their values and gradients
    /// are the ones the module computes with. Each is named by its ``/NormKit/Parameter/name``.
    var ownParameters: [Parameter] { get }
    /// Copies of the module's own checkpointable tensors that are not parameters (running statistics, step
    /// counters), in a fixed order.
    func ownBuffers() -> [(name: String, value: StateTensor)]
    /// Restores the module's own tensors from `state`, whose keys are exactly the names of ``ownParameters``
    /// and ``ownBuffers()`` (already checked for presence, dtype and shape by ``loadStateDict(_:strict:)``).
    /// Throws and changes nothing when a value breaks the module's own rules (a negative variance, …).
    func loadOwnState(_ state: [String: StateTensor]) throws
    /// Training (`true`, the default) or evaluation mode, used by `callAsFunction(_:)`; set for a whole tree
    /// with ``train(_:)`` / ``eval()``. The explicit `training:` argument of `forward` ignores it.
    var training: Bool { get set }
}

extension Module {
    /// The type's name.
    public var name: String { summary }
    /// The type's name (`"BasicBlock"`).
    public var summary: String { String(describing: type(of: self)) }
    /// None: a leaf.
    public var children: [(name: String, module: any Module)] { [] }
    /// None.
    public var ownParameters: [Parameter] { [] }
    /// None.
    public func ownBuffers() -> [(name: String, value: StateTensor)] { [] }

    /// Restores ``ownParameters`` (a module without buffers needs nothing else): reads every value first, then
    /// assigns them all.
    ///
    /// - Throws: ``/NormKit/NormalizationError/invalidState(layer:name:reason:)`` for a missing or mis-shaped entry.
    public func loadOwnState(_ state: [String: StateTensor]) throws {
        let parameters = ownParameters
        let values = try parameters.map { try LayerCheck.floats(state, $0.name, shape: $0.shape, layer: name) }
        for (parameter, value) in zip(parameters, values) { parameter.value = value }
    }

    /// Every module of the tree with its path, this one first (named `""`), then each child's subtree in
    /// ``children`` order: PyTorch's `named_modules()`.
    public func namedModules() -> [(name: String, module: any Module)] {
        var out: [(name: String, module: any Module)] = [("", self)]
        appendDescendants(of: self, prefix: "", to: &out)
        return out
    }

    /// Every parameter of the tree under its full name (`layer1.0.conv1.weight`), in the tree's pre-order:
    /// PyTorch's `named_parameters()`. The parameters are the live objects: setting a value changes what the
    /// model computes, and each backward writes its gradient there. A parameter shared by two modules is
    /// listed once, under its first name.
    public func namedParameters() -> [(name: String, parameter: Parameter)] {
        var seen = Set<ObjectIdentifier>()
        var out: [(name: String, parameter: Parameter)] = []
        for (path, module) in namedModules() {
            for parameter in module.ownParameters where seen.insert(ObjectIdentifier(parameter)).inserted {
                out.append((qualified(path, parameter.name), parameter))
            }
        }
        return out
    }

    /// Every non-parameter tensor of the tree (running statistics, counters, MABN's buffers) under its full
    /// name: PyTorch's `named_buffers()`. These are copies; change them with ``loadStateDict(_:strict:)``.
    public func namedBuffers() -> [(name: String, value: StateTensor)] {
        namedModules().flatMap { path, module in
            module.ownBuffers().map { (qualified(path, $0.name), $0.value) }
        }
    }

    /// The trainable parameters in the order optimizers index them (``namedParameters()``'s order).
    public var parameters: [Parameter] { namedParameters().map(\.parameter) }

    /// Every checkpointable tensor under its PyTorch `state_dict` name: ``namedParameters()``' values and
    /// ``namedBuffers()``.
    public func stateDict() -> [String: StateTensor] {
        var state: [String: StateTensor] = [:]
        for (path, module) in namedModules() {
            for parameter in module.ownParameters {
                state[qualified(path, parameter.name)] = .float32(shape: parameter.shape, values: parameter.value)
            }
            for (name, value) in module.ownBuffers() { state[qualified(path, name)] = value }
        }
        return state
    }

    /// The module at `path` (`"layer2.0.conv1"`; `""` is this one), nil when there is none: PyTorch's
    /// `get_submodule`.
    public func submodule(_ path: String) -> (any Module)? {
        namedModules().first { $0.name == path }?.module
    }

    /// The live parameter named `name` (`"layer2.0.conv1.weight"`), nil when there is none: PyTorch's
    /// `get_parameter`.
    public func parameter(_ name: String) -> Parameter? {
        namedParameters().first { $0.name == name }?.parameter
    }

    /// Sets ``training`` on every module of the tree (PyTorch's `train(mode)`); returns `self`.
    @discardableResult
    public func train(_ mode: Bool = true) -> Self {
        for (_, module) in namedModules() { module.training = mode }
        return self
    }

    /// Puts the whole tree in evaluation mode: `train(false)`.
    @discardableResult
    public func eval() -> Self { train(false) }
}

/// `path.name`, or `name` at the root.
func qualified(_ path: String, _ name: String) -> String { path.isEmpty ? name : path + "." + name }

/// Appends every descendant of `module` in pre-order, with its path.
private func appendDescendants(
    of module: any Module, prefix: String,
    to out: inout [(name: String, module: any Module)]
) {
    for (name, child) in module.children {
        let path = qualified(prefix, name)
        out.append((path, child))
        appendDescendants(of: child, prefix: path, to: &out)
    }
}
